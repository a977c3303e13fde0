"""Loading the pool YAML: valid files become frozen models; every bad file gives one clear line."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

from elastic.config import Config, find_config_path, load_config
from elastic.errors import ConfigError

from tests.support.configs import BAD, GOOD


def _load(tmp_path, text: str):
    path = tmp_path / "elastic.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_good_config_loads_with_defaults(tmp_path):
    """A valid file yields frozen models with defaults filled in and relative paths made absolute."""
    config = _load(tmp_path, GOOD)
    assert isinstance(config, Config)
    assert config.pools["cpu"].node_names == ("cpu-001", "cpu-002", "cpu-003", "cpu-004")
    assert config.clouds["kaizen"].clouds_yaml == tmp_path / "clouds.yaml"
    assert config.clouds["engage1"].max_parallel == 16 and config.timeouts.boot == 600
    with pytest.raises(ValidationError, match="frozen"):
        config.cluster = "other"  # type: ignore[misc]


def test_placement_options_default_and_load(tmp_path):
    """A pool places jobs together by default, without all_or_nothing or a server group; each can be set."""
    default = _load(tmp_path, GOOD).pools["cpu"]
    assert (default.placement, default.all_or_nothing, default.server_group) == ("together", False, None)
    text = GOOD.replace("    partition: cloud\n", "    partition: cloud\n    placement: spread\n"
                                                   "    all_or_nothing: true\n    server_group: soft-anti-affinity\n")
    pool = _load(tmp_path, text).pools["cpu"]
    assert (pool.placement, pool.all_or_nothing, pool.server_group) == ("spread", True, "soft-anti-affinity")


def test_split_by_pool_reports_unknown_nodes(tmp_path):
    """Nodes are grouped by pool; nodes of no pool are returned separately."""
    config = _load(tmp_path, GOOD)
    by_pool, unknown = config.split_by_pool(["cpu-002", "x1", "cpu-001"])
    assert by_pool == {"cpu": ["cpu-002", "cpu-001"]} and unknown == ["x1"]


def test_user_data_path_is_relative_to_the_config_file(tmp_path):
    """A relative user_data path resolves beside the config file, whatever the cwd."""
    (tmp_path / "compute.yaml.j2").write_text("#cloud-config\n")
    config = _load(tmp_path, GOOD.replace("key_name: hpc}", "key_name: hpc, user_data: compute.yaml.j2}"))
    assert config.pools["cpu"].boot.user_data == tmp_path / "compute.yaml.j2"


def test_config_path_search_order(tmp_path):
    """--config beats $ELASTIC_CONFIG, which beats elastic.yaml beside $SLURM_CONF."""
    env = {"ELASTIC_CONFIG": "/a.yaml", "SLURM_CONF": "/etc/slurm-x/slurm.conf"}
    assert str(find_config_path("/cli.yaml", env)) == "/cli.yaml"
    assert str(find_config_path(None, env)) == "/a.yaml"
    assert str(find_config_path(None, {"SLURM_CONF": "/etc/slurm-x/slurm.conf"})) == "/etc/slurm-x/elastic.yaml"
    assert str(find_config_path(None, {})) == "/etc/slurm/elastic.yaml"


@pytest.mark.parametrize(("text", "line", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_gives_one_line_with_file_line_and_key(tmp_path, text, line, expected):
    """Each malformed file fails with a one-line message naming file:line, the key path and what is wrong."""
    path = tmp_path / "elastic.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: "), message
    assert expected in message, message


def test_unreadable_config_names_the_file(tmp_path):
    """A missing config file gives one line naming the path."""
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("options", "ceiling"), [("", None), ("rate: 0", None), ("rate: 5", 5.0),
                                                   ("max_rate: 2.5", 2.5)])
def test_the_old_rate_key_still_sets_the_pacing_ceiling(tmp_path, options, ceiling):
    """`rate` (a fixed rate before adaptive pacing) is read as max_rate; 0 or unset: no ceiling."""
    text = GOOD.replace("max_parallel: 16", "max_parallel: 16" + (f", {options}" if options else ""))
    assert _load(tmp_path, text).clouds["engage1"].rate_ceiling == ceiling


def test_defaults_are_sized_for_io_bound_bursts(tmp_path):
    """64 creates/deletes in flight per cloud, no rate ceiling, adaptive polling."""
    config = _load(tmp_path, GOOD)
    kaizen = config.clouds["kaizen"]
    assert (kaizen.max_parallel, kaizen.rate_ceiling, config.timeouts.poll) == (64, None, None)

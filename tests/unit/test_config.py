"""Loading the pool YAML: valid files become frozen models; every bad file gives one clear line."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

from elastic.config import Config, find_config_path, load_config
from elastic.errors import ConfigError

GOOD = """\
cluster: engage1
clouds:
  engage1: {clouds_yaml: /etc/openstack/clouds.yaml, max_parallel: 16}
  kaizen: {clouds_yaml: clouds.yaml, region: RegionTwo}
pools:
  cpu:
    nodes: cpu-[001-004]
    partition: cloud
    slurm: {cpus: 4, real_memory: 7500, features: [cloud]}
    boot: {flavor: m1.large, image: slurm-compute, key_name: hpc}
    clouds:
      - {cloud: engage1, network: hpc-private}
      - {cloud: kaizen, network: campus, floating_ip: public, max_nodes: 16}
"""


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


BAD = [
    ("not-yaml", "cluster: a\n  clouds: [\n", 2, "not valid YAML"),
    ("empty", "", 1, "empty"),
    ("list-at-top", "- a\n- b\n", 1, "must be a mapping"),
    ("missing-cluster", GOOD.replace("cluster: engage1\n", ""), 1, "cluster: required key is missing"),
    ("unknown-top-key", GOOD + "pool: {}\n", 14, "pool: unknown key; did you mean 'pools'?"),
    ("unknown-nested-key", GOOD.replace("key_name: hpc", "flavour: x"), 10,
     "pools.cpu.boot.flavour: unknown key; did you mean 'flavor'?"),
    ("bad-cluster-name", GOOD.replace("cluster: engage1", "cluster: my cluster"), 1, "cluster: names may hold"),
    ("unknown-cloud", GOOD.replace("cloud: kaizen,", "cloud: kaizn,"), 13,
     "pools.cpu.clouds[1].cloud: unknown cloud 'kaizn'"),
    ("overlap", GOOD + "  more:\n    nodes: cpu-[004-006]\n    slurm: {cpus: 1, real_memory: 1}\n"
                       "    boot: {flavor: a, image: b}\n    clouds: [{cloud: engage1, network: n}]\n",
     15, "pools.more.nodes: node cpu-004 is also in pool 'cpu'"),
    ("bad-hostlist", GOOD.replace("cpu-[001-004]", "cpu-[001-"), 7, "pools.cpu.nodes:"),
    ("zero-cpus", GOOD.replace("cpus: 4", "cpus: 0"), 9,
     "pools.cpu.slurm.cpus: Input should be greater than or equal to 1 (got 0)"),
    ("memory-string", GOOD.replace("real_memory: 7500", "real_memory: lots"), 9,
     "pools.cpu.slurm.real_memory: Input should be a valid integer"),
    ("duplicate-key", GOOD.replace("    partition: cloud\n", "    partition: cloud\n    partition: other\n"), 9,
     "pools.cpu.partition: duplicate key"),
    ("no-clouds", GOOD.replace("clouds:\n  engage1: {clouds_yaml: /etc/openstack/clouds.yaml, max_parallel: 16}\n"
                               "  kaizen: {clouds_yaml: clouds.yaml, region: RegionTwo}\n", "clouds: {}\n"), 2,
     "clouds: Dictionary should have at least 1 item"),
    ("pool-without-clouds", GOOD.split("    clouds:\n")[0] + "    clouds: []\n", 11,
     "pools.cpu.clouds: Tuple should have at least 1 item"),
    ("long-metadata", GOOD.replace("key_name: hpc", "key_name: hpc, metadata: {note: " + "x" * 300 + "}"), 10,
     "255 characters"),
    ("reserved-metadata", GOOD.replace("key_name: hpc", "key_name: hpc, metadata: {elastic_node: x}"), 10, "reserved"),
    ("bad-enum", GOOD + "slurm: {addresses: dns}\n", 14, "slurm.addresses: Input should be 'scontrol' or 'none'"),
    ("missing-template", GOOD.replace("key_name: hpc", "user_data: nope.j2"), 10, "user-data template"),
    ("negative-timeout", GOOD + "timeouts: {boot: -5}\n", 14, "timeouts.boot: Input should be greater than 0"),
    ("infinite-timeout", GOOD + "timeouts: {boot: .inf}\n", 14,
     "timeouts.boot: Input should be a finite number (got inf)"),
    ("nan-timeout", GOOD + "timeouts: {poll: .nan}\n", 14, "timeouts.poll: Input should be a finite number (got nan)"),
    ("infinite-window", GOOD + "resume_fail: {window: .Inf}\n", 14,
     "resume_fail.window: Input should be a finite number"),
    ("infinite-grace", GOOD + "reconcile: {grace: .inf}\n", 14, "reconcile.grace: Input should be a finite number"),
    ("infinite-api-timeout", GOOD.replace("max_parallel: 16", "max_parallel: 16, api_timeout: .inf"), 3,
     "clouds.engage1.api_timeout: Input should be a finite number"),
    ("infinite-rate", GOOD.replace("max_parallel: 16", "max_parallel: 16, rate: .inf"), 3,
     "clouds.engage1.rate: Input should be a finite number (got inf)"),
    ("nan-cooldown", GOOD.replace("region: RegionTwo", "region: RegionTwo, cooldown: .nan"), 4,
     "clouds.kaizen.cooldown: Input should be a finite number (got nan)"),
    ("minus-infinite-cooldown", GOOD.replace("region: RegionTwo", "region: RegionTwo, cooldown: -.inf"), 4,
     "clouds.kaizen.cooldown: Input should be a finite number"),
    ("zero-parallel", GOOD.replace("max_parallel: 16", "max_parallel: 0"), 3, "clouds.engage1.max_parallel"),
    ("rate-and-max-rate", GOOD.replace("max_parallel: 16", "max_parallel: 16, rate: 5, max_rate: 5"), 3,
     "clouds.engage1: rate is the old name of max_rate: give only max_rate"),
    ("zero-max-rate", GOOD.replace("max_parallel: 16", "max_parallel: 16, max_rate: 0"), 3,
     "clouds.engage1.max_rate: Input should be greater than 0"),
    ("cloud-twice", GOOD.replace("cloud: kaizen,", "cloud: engage1,"), 13, "listed twice"),
    ("pool-without-slurm", GOOD.replace("    slurm: {cpus: 4, real_memory: 7500, features: [cloud]}\n", ""), 6,
     "pools.cpu.slurm: required key is missing"),
    ("string-for-pools", GOOD.split("pools:")[0] + "pools: cpu\n", 5, "pools: Input should be a valid dictionary"),
]


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

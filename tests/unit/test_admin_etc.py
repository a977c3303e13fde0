"""The reference files in etc/: they load, render and agree with each other and with the code."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from elastic import slurm_conf_lines, userdata
from elastic.admin.slurm_conf import default_programs
from elastic.config import load_config
from elastic.errors import ConfigError

ETC = Path(__file__).resolve().parents[2] / "etc"


@pytest.fixture(scope="module")
def config():
    return load_config(ETC / "elastic.yaml")


def context(config, pool_name: str, cloud: str, **changes):
    pool = config.pools[pool_name]
    values = {**pool.boot.user_data_vars, "node": pool.node_names[0], "pool": pool_name, "cluster": config.cluster,
              "cloud": cloud, "controller": config.controller}
    values.update(changes)
    return values


def test_reference_config_has_two_clouds_the_second_behind_floating_ips(config):
    """etc/elastic.yaml loads, names two clouds, and the pool on the second takes floating IPs."""
    assert list(config.clouds) == ["engage1", "campus"]
    campus = [entry for entry in config.pools["cpu"].clouds if entry.cloud == "campus"]
    assert campus and campus[0].floating_ip


@pytest.mark.parametrize("pool_name", ["cpu", "bigmem"])
def test_user_data_template_renders_to_cloud_config(config, pool_name):
    """The template renders for each of the pool's clouds into YAML cloud-config within Nova's size limit."""
    pool = config.pools[pool_name]
    for entry in pool.clouds:
        text = userdata.render_user_data(pool.boot.user_data, context(config, pool_name, entry.cloud))
        assert text.startswith("#cloud-config\n")
        data = yaml.safe_load(text)
        assert data["hostname"] == pool.node_names[0]
        files = {f["path"]: f for f in data["write_files"]}
        assert f'--conf-server {config.controller} -N {pool.node_names[0]}' in files["/etc/default/slurmd"]["content"]
        assert files["/etc/sssd/sssd.conf"]["permissions"] == "0600"
        assert "ldap_uri = ldaps://" in files["/etc/sssd/sssd.conf"]["content"]
        assert "CVMFS_REPOSITORIES=sft.cern.ch,atlas.cern.ch" in files["/etc/cvmfs/default.local"]["content"]
        assert data["mounts"][0][1] == "/home" and data["mounts"][0][3].startswith("ro,")
        assert data["runcmd"][0] == ["/usr/local/sbin/elastic-fetch-munge-key"]
        assert base64.b64decode(userdata.encode_user_data(text)).decode() == text


def test_user_data_carries_no_munge_key_only_where_to_fetch_it(config):
    """The rendered user-data names the key's URL and the token file, never key material."""
    text = userdata.render_user_data(config.pools["cpu"].boot.user_data, context(config, "cpu", "engage1"))
    assert config.pools["cpu"].boot.user_data_vars["munge_key_url"] in text
    assert not re.search(r"munge_key\s*[:=]", text)
    assert "set -x" not in text


def test_user_data_refuses_to_render_without_a_controller(config):
    """Without `controller:` in the YAML the template fails, naming what to set, instead of booting a lost slurmd."""
    with pytest.raises(ConfigError, match="controller_must_be_set_in_elastic_yaml"):
        userdata.render_user_data(config.pools["cpu"].boot.user_data,
                                  context(config, "cpu", "engage1", controller=None))


def test_user_data_names_every_variable_it_needs(config):
    """A missing user_data_var is an error naming it (StrictUndefined), not an empty value."""
    values = context(config, "cpu", "engage1")
    del values["ldap_uri"]
    with pytest.raises(ConfigError, match="ldap_uri"):
        userdata.render_user_data(config.pools["cpu"].boot.user_data, values)


def test_shipped_slurm_include_matches_the_generated_one(config):
    """etc/slurm/elastic.conf is exactly what `elastic slurm-conf --programs-dir /opt/elastic/bin` prints (comments
    aside)."""
    generated = slurm_conf_lines.render(config, default_programs(Path("/opt/elastic/bin")))

    def settings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    assert settings((ETC / "slurm" / "elastic.conf").read_text()) == settings(generated)


def test_clouds_yaml_example_uses_application_credentials_for_each_cloud(config):
    """etc/openstack/clouds.yaml has an application-credential entry for every cloud of etc/elastic.yaml."""
    clouds = yaml.safe_load((ETC / "openstack" / "clouds.yaml").read_text())["clouds"]
    for name, cloud in config.clouds.items():
        entry = clouds[cloud.cloud or name]
        assert entry["auth_type"] == "v3applicationcredential"
        assert {"auth_url", "application_credential_id", "application_credential_secret"} <= set(entry["auth"])


def test_logrotate_and_reconcile_units_match_the_config(config):
    """logrotate rotates the configured log file; the timer's service and the cron line run reconcile --apply."""
    assert str(config.log_file) in (ETC / "logrotate.d" / "elastic").read_text()
    service = (ETC / "systemd" / "elastic-reconcile.service").read_text()
    cron = (ETC / "cron.d" / "elastic-reconcile").read_text()
    command = re.search(r"^ExecStart=(.*)$", service, re.M).group(1)
    assert command.endswith("elastic reconcile --apply") and command in cron
    assert re.search(r"^User=slurm$", service, re.M)
    assert "Unit=" not in (ETC / "systemd" / "elastic-reconcile.timer").read_text()  # same name as the service

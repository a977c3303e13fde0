"""The real `openstack` CLI (python-openstackclient) against the emulator at both microversion
caps, and the emulator's own command line, `python -m elastic.lab.cloud`."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openstack
import pytest

from elastic.lab.cloud.cli import main

pytestmark = pytest.mark.integration


# The python-openstackclient installed beside this Python (a test extra), whatever PATH holds.
OPENSTACK = str(Path(sys.executable).with_name("openstack"))


def openstack_cli(env: dict[str, str], *args: str):
    result = subprocess.run([OPENSTACK, "--os-cloud", "lab", *args], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"openstack {' '.join(args)}: {result.stderr[-2000:]}"
    return json.loads(result.stdout) if "json" in args else result.stdout


def server_lane(env: dict[str, str]) -> dict:
    created = openstack_cli(env, "server", "create", "--flavor", "m1.small", "--image", "debian-12",
                            "--network", "private", "--wait", "vm1", "-f", "json")
    listed = openstack_cli(env, "server", "list", "-f", "json")
    shown = openstack_cli(env, "server", "show", "vm1", "-f", "json")
    openstack_cli(env, "server", "delete", "--wait", "vm1")
    return {"created": created, "listed": listed, "shown": shown}


def catalogue_lane(env: dict[str, str]) -> dict:
    found = {kind: openstack_cli(env, kind, "list", "-f", "json") for kind in ("flavor", "image", "network")}
    fip = openstack_cli(env, "floating", "ip", "create", "public", "-f", "json")
    found["fips"] = openstack_cli(env, "floating", "ip", "list", "-f", "json")
    openstack_cli(env, "floating", "ip", "delete", fip["floating_ip_address"])
    found["fip"] = fip
    return found


@pytest.mark.parametrize("cap", ["2.12", "2.96"])
def test_openstack_cli_commands_at_both_caps(make_lab, tmp_path, cap):
    """server create --wait/list/show/delete --wait, flavor/image/network list, floating ip create/list/delete all
    work."""
    lab = make_lab({"clouds": {"lab": {"max_microversion": cap, "boot_seconds": 0, "delete_seconds": 0}}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["OS_CLIENT_CONFIG_FILE"] = str(lab.write_clouds_yaml(tmp_path / "clouds.yaml"))
    with ThreadPoolExecutor(2) as pool:  # two independent lanes: CLI start-up dominates
        servers, catalogue = pool.submit(server_lane, env), pool.submit(catalogue_lane, env)
        servers, catalogue = servers.result(), catalogue.result()
    assert servers["created"]["status"] == "ACTIVE" and servers["shown"]["name"] == "vm1"
    (row,) = servers["listed"]
    assert row["Name"] == "vm1" and row["Networks"]["private"][0].startswith("127.10.")
    assert lab.servers("lab") == []
    assert {"m1.small", "m1.tiny"} <= {f["Name"] for f in catalogue["flavor"]}
    assert [i["Name"] for i in catalogue["image"]] == ["debian-12"]
    assert {n["Name"] for n in catalogue["network"]} == {"private", "public"}
    assert catalogue["fip"]["floating_ip_address"].startswith("127.20.")
    assert [f["Floating IP Address"] for f in catalogue["fips"]] == [catalogue["fip"]["floating_ip_address"]]
    assert lab.clouds["lab"].floating_ips == {}
    sent = {r["headers"].get("OpenStack-API-Version") for r in lab.requests() if r["endpoint"] == "POST /servers"}
    assert sent == {f"compute {cap}"}
    assert all(r["status"] < 500 for r in lab.requests())


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(deadline - time.monotonic()):
            return process.stdout.readline()
    pytest.fail("the emulator printed no line in time")


def test_module_serves_until_sigterm(tmp_path, monkeypatch):
    """python -m elastic.lab.cloud prints its URL, writes clouds.yaml (lab + configured clouds) and exits 0 on
    SIGTERM."""
    config = tmp_path / "lab.yaml"
    config.write_text("clouds:\n  east:\n    faults: {latency_seconds: 0.01}\n")
    clouds_yaml = tmp_path / "clouds.yaml"
    process = subprocess.Popen([sys.executable, "-m", "elastic.lab.cloud", "--port", "0",
                                "--clouds-yaml", str(clouds_yaml), "--max-microversion", "2.12",
                                "--boot-seconds", "0.05", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _first_line(process, 30)
        assert line.startswith("lab cloud serving http://127.0.0.1:") and "clouds=east,lab" in line
        for name in [n for n in os.environ if n.startswith("OS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds_yaml))
        for cloud in ("lab", "east"):
            conn = openstack.connect(cloud=cloud)
            assert conn.compute.get("/").json()["version"]["version"] == "2.12"
            conn.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize("text, fragment", [
    ("clouds: [unclosed\n", "while parsing"),
    ("clouds:\n  lab:\n    networks: [{name: n, cidr: 172.16.0.0/16}]\n", "inside 127.0.0.0/8"),
    ("clouds:\n  lab:\n    faults: {outage: sometimes}\n", "outage"),
    ("- just a list\n", "mapping"),
])
def test_bad_config_is_one_line_naming_the_file_and_exit_2(tmp_path, capsys, text, fragment):
    """A bad --config exits 2 with one stderr line that names the file and the problem."""
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["--clouds-yaml", str(tmp_path / "clouds.yaml"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(config) in err and fragment in err
    assert not (tmp_path / "clouds.yaml").exists()

"""The admin subcommands through `elastic.cli.main`: exit codes, one-line errors, nothing changed on bad input."""

from __future__ import annotations

import argparse
import json

import pytest

from elastic import cli, wiring
from elastic.admin import cli as admin_cli
from elastic.cloud import floating_ip_mark
from elastic.errors import CloudErrorKind, SlurmError
from elastic.locks import exclusive_lock
from elastic.testing import MemoryCloud

from tests.support.admin import CONFIG, IDLE, FakeSlurm, ours, slurm_nodes


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A config file plus memory clouds and a fake Slurm that the CLI gets instead of real ones."""
    path = tmp_path / "elastic.yaml"
    path.write_text(CONFIG + f"state_dir: {tmp_path / 'state'}\nlog_file: {tmp_path / 'elastic.log'}\n")
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}
    slurm = FakeSlurm()
    made: list[str] = []

    def make_clouds(config, clock):
        made.append("clouds")
        return clouds

    def make_slurm(config):
        made.append("slurm")
        if slurm.fail_reads == "no scontrol":
            raise SlurmError("scontrol: not found in /usr/bin; set its path in the config")
        return slurm

    monkeypatch.setattr(wiring, "make_clouds", make_clouds)
    monkeypatch.setattr(wiring, "make_slurm", make_slurm)

    class Site:
        pass

    s = Site()
    s.path, s.clouds, s.slurm, s.made, s.tmp = path, clouds, slurm, made, tmp_path
    return s


def run(site, *argv):
    return cli.main([argv[0], "--config", str(site.path), *argv[1:]])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("elastic: error: ")
    return err


@pytest.mark.parametrize("command", [["status"], ["reconcile"], ["reconcile", "--apply"]])
def test_unknown_pool_is_one_line_exit_2_before_any_call(site, capsys, command):
    """--pool with a name not in the YAML exits 2 with one line, before any cloud or Slurm is built."""
    assert run(site, *command, "--pool", "nope") == 2
    assert "unknown pool 'nope'" in one_error_line(capsys) and site.made == []


@pytest.mark.parametrize("command", [["check"], ["status"], ["reconcile"], ["slurm-conf"]])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, command):
    """A config error exits 2 with the file:line message on one line."""
    path = tmp_path / "elastic.yaml"
    path.write_text("cluster: x\nclouds: {}\n")
    assert cli.main([*command, "--config", str(path)]) == 2
    assert f"{path}:" in one_error_line(capsys)


def test_status_exit_1_on_mismatch_and_json_rows(site, capsys):
    """status prints rows and exits 1 when a mismatch exists; --json prints the same rows as JSON."""
    site.clouds["alpha"].add("cpu-001", metadata=ours("cpu-001"), created=0)
    assert run(site, "status") == 1
    out = capsys.readouterr().out
    assert "orphan" in out and out.splitlines()[-1].startswith("6 nodes, 1 live servers; mismatches: 1 orphan")
    assert run(site, "status", "--json", "--pool", "cpu") == 1
    data = json.loads(capsys.readouterr().out)
    assert [r["node"] for r in data["rows"]] == ["cpu-001", "cpu-002", "cpu-003", "cpu-004"]
    assert data["rows"][0]["problem"] == "orphan" and data["slurm_error"] is None


def test_status_takes_the_time_from_the_clock_it_is_given(site, capsys):
    """The command's clock is its one source of time: the JSON's time and each server's age."""
    site.clouds["alpha"].add("cpu-001", metadata=ours("cpu-001"), created=1000.0)
    args = argparse.Namespace(config=str(site.path), pool=["cpu"], json=True)
    assert admin_cli.status_command(args, clock=lambda: 1600.0) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["time"] == 1600.0 and data["rows"][0]["server"]["age_seconds"] == 600.0


def test_status_without_slurm_warns_and_still_shows_servers(site, capsys):
    """With no scontrol, status warns on stderr and shows servers with an unknown Slurm state; exit 0."""
    site.slurm.fail_reads = "no scontrol"
    site.clouds["alpha"].add("cpu-001", metadata=ours("cpu-001"), created=0)
    assert run(site, "status") == 0
    captured = capsys.readouterr()
    assert "Slurm not asked (scontrol: not found" in captured.err
    assert captured.out.splitlines()[1].split()[:3] == ["cpu-001", "cpu", "?"]


def test_unreachable_cloud_is_reported_and_changes_nothing_for_its_nodes(site, capsys):
    """A cloud that does not answer is named on its own line (exit 1); a node whose pool uses it is
    not judged missing, while an orphan on the cloud that answers is still repaired."""
    site.clouds["alpha"].add("cpu-001", metadata=ours("cpu-001"), created=0)
    site.slurm.node_states = slurm_nodes(cpu_002=IDLE)
    site.clouds["beta"].fail_next("list", CloudErrorKind.UNREACHABLE, times=2, message="list servers: cannot connect")
    assert run(site, "status") == 1
    out = capsys.readouterr().out
    assert "cloud beta: cannot be listed" in out and "unreachable: list servers: cannot connect" in out
    (row,) = [line for line in out.splitlines() if line.startswith("cpu-002")]
    assert "missing" not in row and "beta not answering" in row
    site.clouds["beta"].fail_next("list", CloudErrorKind.UNREACHABLE, times=4, message="list servers: cannot connect")
    assert run(site, "reconcile", "--apply") == 1
    assert "cloud beta cannot be listed: unreachable" in capsys.readouterr().err
    assert [op for op, _ in site.clouds["alpha"].calls if op == "delete"] == ["delete"]
    assert site.slurm.changes == []


def test_reconcile_dry_run_changes_nothing_and_apply_repairs(site, capsys):
    """Without --apply the plan is printed (exit 1) and nothing changes; with --apply it is carried out and logged."""
    old = site.clouds["alpha"].add("cpu-001", metadata=ours("cpu-001"), created=0)
    site.slurm.node_states = slurm_nodes(cpu_002=IDLE)
    assert run(site, "reconcile") == 1
    out = capsys.readouterr().out
    assert "delete" in out and "power_down" in out and "nothing changed (use --apply)" in out
    assert not any(op == "delete" for op, _ in site.clouds["alpha"].calls) and site.slurm.changes == []
    assert run(site, "reconcile", "--apply") == 0
    out = capsys.readouterr().out
    assert ("delete", old.id) in site.clouds["alpha"].calls
    assert site.slurm.changes == [(("cpu-002",), "power_down_force", "elastic: reconcile: server vanished")]
    assert "done" in out
    events = [json.loads(line)["event"] for line in (site.tmp / "elastic.log").read_text().splitlines()]
    assert events[0] == "reconcile.start" and "cloud.delete" in events and events[-1] == "reconcile.done"


def test_reconcile_with_nothing_to_do_exits_0(site, capsys):
    """A consistent cluster: 'nothing to repair', exit 0."""
    assert run(site, "reconcile", "--apply") == 0
    assert capsys.readouterr().out.strip() == "nothing to repair"


def test_reconcile_needs_slurm(site, capsys):
    """reconcile refuses to guess without Slurm: one line, exit 2, nothing deleted."""
    site.clouds["alpha"].add("cpu-001", metadata=ours("cpu-001"), created=0)
    site.slurm.fail_reads = True
    assert run(site, "reconcile", "--apply") == 2
    assert "Unable to contact slurm controller" in one_error_line(capsys)
    assert not any(op == "delete" for op, _ in site.clouds["alpha"].calls)


def test_second_reconcile_apply_is_refused_while_one_runs(site, capsys):
    """While another reconcile --apply holds the lock, a second one exits 2 with one line and changes nothing."""
    site.clouds["alpha"].add("cpu-001", metadata=ours("cpu-001"), created=0)
    with exclusive_lock(site.tmp / "state" / "reconcile.lock", timeout=1):
        assert run(site, "reconcile", "--apply") == 2
    assert "another `elastic reconcile --apply` is running" in one_error_line(capsys)
    assert not any(op in ("delete", "list") for op, _ in site.clouds["alpha"].calls)


def test_slurm_conf_prints_writes_and_checks(site, capsys, tmp_path):
    """slurm-conf prints the include, writes it with --output (then reports it up to date), and --check compares."""
    programs = tmp_path / "bin"
    site.slurm.config = lambda: {"SLURM_VERSION": "22.05.8"}
    assert run(site, "slurm-conf", "--programs-dir", str(programs)) == 0
    captured = capsys.readouterr()
    assert f"ResumeProgram={programs / 'elastic-resume'}" in captured.out
    assert "NodeName=cpu-[001-004] CPUs=1 RealMemory=1800 Feature=cloud State=CLOUD" in captured.out
    assert "does not exist" in captured.err
    target = tmp_path / "elastic-nodes.conf"
    assert run(site, "slurm-conf", "--programs-dir", str(programs), "-o", str(target)) == 0
    assert target.read_text() == captured.out and "wrote" in capsys.readouterr().err
    assert run(site, "slurm-conf", "--programs-dir", str(programs), "-o", str(target)) == 0
    assert "up to date" in capsys.readouterr().err
    site.slurm.config = lambda: {"SLURM_VERSION": "22.05.8", "ResumeTimeout": "900 sec"}
    site.slurm.node_fields = dict
    assert run(site, "slurm-conf", "--check") == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["SETTING", "WANTED"] and "ResumeProgram" in out
    assert "cpu-[001-004],gpu-[1-2]: node" in out


def test_slurm_conf_check_without_slurm_is_one_line_exit_2(site, capsys):
    """--check with no reachable slurmctld exits 2 with one line."""
    site.slurm.fail_reads = "no scontrol"
    assert run(site, "slurm-conf", "--check") == 2
    assert "scontrol: not found" in one_error_line(capsys)


# ---- slurm-conf and the Slurm version ----------------------------------------------------------


def _versioned(text: str) -> set[str]:
    return {key for key in ("NoAddrCache", "PrivateData=cloud", "TreeWidth=65533", "cloud_reg_addrs") if key in text}


def test_slurm_conf_writes_for_the_running_slurmctlds_version(site, capsys):
    """The running slurmctld's SLURM_VERSION decides the block (24.11: none of 22.05's extras), and stderr says so."""
    site.slurm.config = lambda: {"SLURM_VERSION": "24.11.5"}
    assert run(site, "slurm-conf") == 0
    captured = capsys.readouterr()
    assert _versioned(captured.out) == set() and "SlurmctldParameters=enable_configless" in captured.out
    assert "for Slurm 24.11." in captured.out.splitlines()[0]
    assert "power-save lines for Slurm 24.11.5 (the running slurmctld's)" in captured.err


@pytest.mark.parametrize("given, expected", [
    ("22.05", {"NoAddrCache", "PrivateData=cloud", "TreeWidth=65533"}),
    ("23.02.7", {"NoAddrCache", "TreeWidth=65533"}),
    ("23.11", set()), ("24.11", set()), ("26.05", set()),
])
def test_slurm_conf_slurm_version_option(site, capsys, given, expected):
    """--slurm-version X.Y writes that version's block without asking slurmctld."""
    site.slurm.config = lambda: pytest.fail("slurmctld asked despite --slurm-version")
    assert run(site, "slurm-conf", "--slurm-version", given) == 0
    captured = capsys.readouterr()
    assert _versioned(captured.out) == expected and "(--slurm-version)" in captured.err


@pytest.mark.parametrize("argv, running", [
    (["slurm-conf", "--slurm-version", "24"], None),
    (["slurm-conf", "--slurm-version", "latest"], None),
    (["slurm-conf", "--check", "--slurm-version", "x.y"], None),
    (["slurm-conf"], {"SLURM_VERSION": "(null)"}),
    (["slurm-conf", "--check"], {"SLURM_VERSION": "twenty-four"}),
])
def test_slurm_conf_unparseable_version_is_one_line_exit_2(site, capsys, argv, running):
    """A version that is not one, given or shown by slurmctld, is one error line and exit 2; nothing written."""
    site.slurm.config = lambda: running
    site.slurm.node_fields = dict
    assert run(site, *argv) == 2
    assert "is not a Slurm version" in one_error_line(capsys)


def test_slurm_conf_without_slurmctld_uses_scontrols_version_else_assumes_22_05(site, capsys):
    """slurmctld not answering: the installed scontrol's version; no scontrol version either, or no
    scontrol at all: 22.05's block, and stderr says it was assumed."""
    def down():
        raise SlurmError("scontrol show config: exit 1: slurm_load_ctl_conf error: Unable to contact slurm controller")

    site.slurm.config = down
    site.slurm.client_version = lambda: (24, 11, 5)
    assert run(site, "slurm-conf") == 0
    captured = capsys.readouterr()
    assert _versioned(captured.out) == set()
    assert "Slurm 24.11.5 (the installed scontrol's; slurmctld did not answer" in captured.err

    def no_version():
        raise SlurmError("scontrol --version: exit 1")

    site.slurm.client_version = no_version
    assert run(site, "slurm-conf") == 0
    captured = capsys.readouterr()
    assert _versioned(captured.out) == {"NoAddrCache", "PrivateData=cloud", "TreeWidth=65533"}
    assert "Slurm 22.05 (assumed: use --slurm-version to name yours" in captured.err
    site.slurm.fail_reads = "no scontrol"
    assert run(site, "slurm-conf") == 0
    assert "Slurm 22.05 (assumed" in capsys.readouterr().err


def test_slurm_conf_check_flags_defunct_options_on_24_11(site, capsys):
    """--check on 24.11 running a 22.05 block: NoAddrCache is a 'remove' difference, exit 1."""
    from elastic.config import load_config

    from tests.support.admin import node_fields

    config = load_config(site.path)
    site.slurm.config = lambda: {"SLURM_VERSION": "24.11.5", "CommunicationParameters": "NoAddrCache"}
    site.slurm.node_fields = lambda: node_fields(config)
    assert run(site, "slurm-conf", "--check") == 1
    out = capsys.readouterr().out
    assert "remove NoAddrCache (defunct from 23.11)" in out and "differences for Slurm 24.11.5" in out
    assert "PrivateData" not in out and "TreeWidth" not in out


def test_reconcile_deletes_empty_groups_only_when_slurm_names_the_running_jobs(site, capsys):
    """With a pool using server groups: an empty group of ours whose job holds no node is listed
    (dry run) and deleted (--apply); when Slurm cannot list its jobs no group is touched."""
    site.path.write_text(site.path.read_text().replace("    partition: cloud\n",
                                                       "    partition: cloud\n    server_group: affinity\n"))
    stale = site.clouds["alpha"].create_server_group("test-cpu-job5", "affinity")
    site.clouds["alpha"].create_server_group("test-cpu-job6", "affinity")
    site.slurm.jobs = {"cpu-002": [6]}
    assert run(site, "reconcile") == 1
    assert f"server group test-cpu-job5 ({stale.id}) on alpha: no member" in capsys.readouterr().out
    assert len(site.clouds["alpha"].server_groups) == 2
    site.slurm.jobs_by_node = lambda: (_ for _ in ()).throw(SlurmError("scontrol -o show job: exit 1"))
    assert run(site, "reconcile", "--apply") == 0
    assert "server groups not checked" in capsys.readouterr().err and len(site.clouds["alpha"].server_groups) == 2
    del site.slurm.jobs_by_node
    assert run(site, "reconcile", "--apply") == 0
    assert "server group test-cpu-job5 on alpha: deleted" in capsys.readouterr().out
    assert [g.name for g in site.clouds["alpha"].server_groups.values()] == ["test-cpu-job6"]


def test_reconcile_lists_and_deletes_leaked_floating_ips_of_ours_only(site, capsys):
    """With a pool taking floating IPs: our detached IP past the grace period is shown by the dry
    run (exit 1, nothing changed) and deleted by --apply, logged; our IP on a live server, a young
    one, and IPs without our cluster's mark stay. --pool scopes the pass to nodes: no IP is touched."""
    import time

    site.path.write_text(site.path.read_text().replace("      - {cloud: alpha, network: private}",
                                                       "      - {cloud: alpha, network: private, floating_ip: public}"))
    alpha = site.clouds["alpha"]
    old = time.time() - 3600
    server = alpha.add("cpu-001", metadata=ours("cpu-001"), created=old)
    site.slurm.node_states = slurm_nodes(cpu_001=IDLE)
    alpha.attach_floating_ip(server, "public")
    leaked = alpha.add_floating_ip(description=floating_ip_mark("test", "cpu-002"), created=old)
    young = alpha.add_floating_ip(description=floating_ip_mark("test", "cpu-003"))
    foreign = [alpha.add_floating_ip(description=d, created=old).id
               for d in ("", "bastion", floating_ip_mark("other", "cpu-002"))]
    assert run(site, "reconcile", "--pool", "cpu") == 0
    assert "nothing to repair" in capsys.readouterr().out
    assert run(site, "reconcile") == 1
    out = capsys.readouterr().out
    assert leaked.address in out and "detached: its server is gone" in out and "nothing changed" in out
    assert "1 repairs due, 1 waiting" in out and len(alpha.floating_ips) == 6
    assert run(site, "reconcile", "--apply") == 0
    out = capsys.readouterr().out
    assert leaked.id not in alpha.floating_ips and "done" in out
    assert set(alpha.floating_ips) == {*foreign, young.id} | {f.id for f in alpha.floating_ips.values()
                                                              if f.server_id == server.id}
    log = [json.loads(line) for line in (site.tmp / "elastic.log").read_text().splitlines()]
    assert any(e["event"] == "cloud.delete_floating_ip" and e["ok"] and e["ip"] == leaked.address for e in log)


def test_status_shows_the_leaked_floating_ips_reconcile_would_delete_and_says_when_it_cannot_look(site, capsys):
    """Our detached IP past the grace period is a line of its own (exit 1); a young one and another
    cluster's are not shown. --pool does not look at floating IPs (JSON null). A floating-IP list that
    fails while the cloud's servers were listed is a warning, and trouble (exit 1)."""
    import time

    site.path.write_text(site.path.read_text().replace("      - {cloud: alpha, network: private}",
                                                       "      - {cloud: alpha, network: private, floating_ip: public}"))
    alpha = site.clouds["alpha"]
    old = time.time() - 3600
    leaked = alpha.add_floating_ip(description=floating_ip_mark("test", "cpu-002"), created=old)
    young = alpha.add_floating_ip(description=floating_ip_mark("test", "cpu-003"))
    alpha.add_floating_ip(description=floating_ip_mark("other", "cpu-002"), created=old)
    assert run(site, "status") == 1
    out = capsys.readouterr().out
    assert (f"floating IP {leaked.address} ({leaked.id}) on alpha of cpu-002 leaked (detached: its server is "
            "gone); `elastic reconcile --apply` deletes it") in out
    assert out.count("floating IP ") == 1 and young.address not in out
    assert run(site, "status", "--pool", "cpu", "--json") == 0
    assert json.loads(capsys.readouterr().out)["leaked_floating_ips"] is None
    alpha.fail_next("list_floating_ips", CloudErrorKind.UNREACHABLE, times=10)
    assert run(site, "status", "--json") == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["leaked_floating_ips"] == [] and list(shown["floating_ips_unseen"]) == ["alpha"]
    assert run(site, "status") == 1
    assert "elastic: warning: floating IPs on alpha cannot be listed" in capsys.readouterr().err


def _history(site):
    from elastic.history import History

    def unexpected(message):
        raise AssertionError(message)

    return History(site.tmp / "state" / "history.json", on_error=unexpected)


def test_status_with_pool_judges_and_shows_only_that_pools_pending_deletes_and_problems(site, capsys):
    """A pending delete and a cloud problem of pool gpu are no trouble of `--pool cpu`: exit 0, no
    line for them, and the JSON's pending_deletes and cloud_problems hold the cpu pool's only. The
    gpu pool's view and the view of every pool still show them (exit 1)."""
    history = _history(site)
    history.add_pending_deletes({"gpu-1": {"beta": "suspend: delete failed: unreachable: timed out"}}, 100.0)
    history.record_problem("beta", "gpu", "not-found", "image debian-12 not found", 100.0)
    assert run(site, "status", "--pool", "cpu") == 0
    out = capsys.readouterr().out
    assert "pending" not in out and "gpu" not in out and "cloud beta" not in out
    assert run(site, "status", "--pool", "cpu", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pending_deletes"] == {} and data["cloud_problems"] == {}
    assert run(site, "status", "--pool", "gpu") == 1
    out = capsys.readouterr().out
    assert "cloud beta: pool gpu: not-found: image debian-12 not found" in out
    assert "1 delete(s) pending: gpu-1" in out
    assert run(site, "status", "--pool", "gpu", "--json") == 1
    data = json.loads(capsys.readouterr().out)
    assert list(data["pending_deletes"]) == ["gpu-1"] and list(data["cloud_problems"]["beta"]) == ["gpu"]
    assert run(site, "status") == 1
    assert "1 delete(s) pending: gpu-1" in capsys.readouterr().out


def test_status_with_pool_keeps_its_own_pending_deletes_apart_from_another_pools(site, capsys):
    """With pending deletes in two pools, `--pool cpu` names (and is troubled by) cpu's only."""
    history = _history(site)
    history.add_pending_deletes({"gpu-2": {"beta": "resume-fail: delete failed: unreachable: timed out"},
                                 "cpu-003": {"alpha": "suspend: delete failed: unreachable: timed out"}}, 100.0)
    assert run(site, "status", "--pool", "cpu") == 1
    out = capsys.readouterr().out
    assert "cloud alpha: 1 delete(s) pending: cpu-003" in out and "gpu-2" not in out
    assert run(site, "status", "--pool", "cpu", "--json") == 1
    assert list(json.loads(capsys.readouterr().out)["pending_deletes"]) == ["cpu-003"]


def test_status_and_reconcile_leave_the_ip_of_a_server_a_suspend_under_way_deletes_and_clean_up_after_a_killed_one(
        site, capsys, monkeypatch):
    """While a suspend under way deletes an old server (task_state deleting, Nova slow to finish),
    the server's old floating IP is not called leaked by status, and reconcile shows it waiting and
    leaves it (the suspend's sweep deletes it once the server is gone). Had the suspend been killed
    (its node lock free), reconcile --apply forgets its pending deletes, and the next pass deletes
    the IP, which status now shows as leaked, as reconcile would delete it."""
    import dataclasses
    import time

    from elastic.cloud import is_ours
    from elastic.locks import node_locks

    site.path.write_text(site.path.read_text().replace("      - {cloud: alpha, network: private}",
                                                       "      - {cloud: alpha, network: private, floating_ip: public}"))
    alpha = site.clouds["alpha"]
    old = time.time() - 3600
    server = alpha.add("cpu-001", metadata=ours("cpu-001"), created=old)
    fip = alpha.add_floating_ip(description=floating_ip_mark("test", "cpu-001"), server_id=server.id, created=old)
    alpha.servers[server.id] = dataclasses.replace(server, task_state="deleting")
    monkeypatch.setattr(alpha, "list_servers", lambda cluster, names=None: [  # Nova still deleting it
        s for s in alpha.servers.values() if is_ours(s.metadata, cluster) and (names is None or s.name in names)])
    site.slurm.node_states = slurm_nodes(cpu_001="IDLE+CLOUD+POWERING_DOWN")
    _history(site).record_releases(["cpu-001"], time.time() - 5, {"cpu-001": {"alpha": "suspend: under way",
                                                                             "beta": "suspend: under way"}})
    with node_locks(site.tmp / "state" / "locks", ["cpu-001"], timeout=1):  # the suspend holds it
        assert run(site, "status") == 1  # its pending deletes are trouble, as before
        out = capsys.readouterr().out
        assert "leaked" not in out and "1 delete(s) pending: cpu-001" in out
        assert run(site, "status", "--json") == 1
        assert json.loads(capsys.readouterr().out)["leaked_floating_ips"] == []
        assert run(site, "reconcile") == 1
        out = capsys.readouterr().out
        (line,) = [line for line in out.splitlines() if fip.address in line]
        assert line.startswith("wait") and "its server is being deleted (suspend: under way)" in line
        assert run(site, "reconcile", "--apply") == 0
        out = capsys.readouterr().out
        assert fip.id in alpha.floating_ips and "node busy" in out
    assert ("delete_floating_ip", fip.id) not in alpha.calls
    # The suspend was killed: its lock is free, its marks stay.
    assert run(site, "reconcile", "--apply") == 0
    out = capsys.readouterr().out
    assert fip.id in alpha.floating_ips and _history(site).pending_deletes() == {}
    assert run(site, "status") == 1
    out = capsys.readouterr().out
    assert f"floating IP {fip.address} ({fip.id}) on alpha of cpu-001 leaked (on {server.id}, no live server" in out
    assert run(site, "reconcile", "--apply") == 0
    assert fip.id not in alpha.floating_ips and "done" in capsys.readouterr().out

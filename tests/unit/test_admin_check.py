"""`elastic check`: cloud look-ups, flavor sizes, quota headroom, programs, slurmctld's settings."""

from __future__ import annotations

import sys

import pytest

from elastic import slurm_conf_lines
from elastic.admin import check
from elastic.cloud import Flavor, Limits
from elastic.errors import CloudError, CloudErrorKind
from elastic.testing import MemoryCloud

from tests.support.admin import CONFIG, RUNNING, RUNNING_22_05, RUNNING_24_11, make_config, ours


def by_subject(checks):
    return {c.subject: c for c in checks}


def programs_in(tmp_path, mode: int = 0o755, interpreter: str = sys.executable) -> slurm_conf_lines.Programs:
    paths = {}
    for key, name in (("resume", "elastic-resume"), ("suspend", "elastic-suspend"),
                      ("resume_fail", "elastic-resume-fail")):
        path = tmp_path / name
        path.write_text(f"#!{interpreter}\n")
        path.chmod(mode)
        paths[key] = path
    return slurm_conf_lines.Programs(**paths)


def running_with(programs: slurm_conf_lines.Programs, **changes: str) -> dict[str, str]:
    running = dict(RUNNING_22_05, ResumeProgram=str(programs.resume), SuspendProgram=str(programs.suspend),
                   ResumeFailProgram=str(programs.resume_fail))
    running.update(changes)
    return running


# ---- flavor sizes and quota ---------------------------------------------------------------------


@pytest.mark.parametrize("cpus, memory, vcpus, ram, expected", [
    (2, 3800, 2, 4096, [check.OK]),
    (4, 3800, 2, 4096, [check.FAIL]),  # more CPUs than vCPUs: drained on registration
    (1, 3800, 2, 4096, [check.WARN]),  # a vCPU unused
    (2, 4300, 2, 4096, [check.WARN]),  # above the flavor, within Slurm's 10% tolerance
    (2, 4600, 2, 4096, [check.FAIL]),  # beyond the tolerance: never registers
    (4, 4600, 2, 4096, [check.FAIL, check.FAIL]),
])
def test_flavor_must_hold_the_slurm_node(tmp_path, cpus, memory, vcpus, ram, expected):
    """CPUs above vCPUs or RealMemory beyond the 10% CLOUD tolerance fail; waste or reliance on the tolerance warns."""
    config = make_config(tmp_path, CONFIG.replace("slurm: {cpus: 1, real_memory: 1800, features: [cloud]}",
                                                  f"slurm: {{cpus: {cpus}, real_memory: {memory}}}"))
    checks = check.size_checks("cpu", config.pools["cpu"], Flavor("f", "m1.medium", vcpus, ram, 40))
    assert [c.status for c in checks] == expected
    assert all(c.fix for c in checks if c.status != check.OK)


def test_memory_fix_suggests_a_value_the_vm_can_report(tmp_path):
    """The RealMemory fix is below the flavor's RAM (a VM reports less than its flavor)."""
    config = make_config(tmp_path, CONFIG.replace("real_memory: 1800, features", "real_memory: 9000, features"))
    [memory] = check.size_checks("cpu", config.pools["cpu"], Flavor("f", "m1.small", 1, 2048, 20))
    assert memory.status == check.FAIL and "real_memory: 1945" in memory.fix


def test_quota_shortfall_warns_and_counts_our_running_servers():
    """Headroom is compared with the pools' full size minus the servers we already run; a shortfall warns."""
    small = Flavor("f", "m1.small", 1, 2048, 20)
    limits = Limits(instances=10, instances_used=8, cores=100, cores_used=8, ram=10**6, ram_used=0)
    enough = check.quota_check("alpha", limits, [("cpu", 4, small)], ours=3)
    assert enough.status == check.OK and "instances 2 free/1 wanted" in enough.detail
    short = check.quota_check("alpha", limits, [("cpu", 4, small), ("gpu", 2, small)], ours=3)
    assert short.status == check.WARN and "instances" in short.fix
    unlimited = check.quota_check("alpha", Limits(-1, 8, -1, 0, -1, 0), [("cpu", 400, small)], ours=0)
    assert unlimited.status == check.OK and "instances unlimited" in unlimited.detail


# ---- clouds -------------------------------------------------------------------------------------


def test_cloud_checks_resolve_every_pool_name(tmp_path):
    """A cloud that has everything gives ok rows for authentication, each pool's names and sizes, key and quota."""
    config = make_config(tmp_path, CONFIG.replace("image: debian-12}\n    clouds:\n      - {cloud: alpha",
                                                  "image: debian-12, key_name: hpc}\n"
                                                  "    clouds:\n      - {cloud: alpha"))
    cloud = MemoryCloud("alpha")
    checks = check.cloud_checks(config, "alpha", cloud)
    assert [c for c in checks if c.status != check.OK] == []
    subjects = [c.subject for c in checks]
    assert subjects[0] == "cloud alpha" and "pool cpu on alpha: image and network" in subjects
    assert "pool cpu on alpha: key pair" in subjects and subjects[-1] == "cloud alpha: quota"


@pytest.mark.parametrize("break_it, subject, words", [
    (lambda c: c.flavors.clear(), "pool cpu on alpha: flavor", "flavor list"),
    (lambda c: c.images.clear(), "pool cpu on alpha: image and network", "image list`; fix pools.cpu.boot.image"),
    (lambda c: c.networks.clear(), "pool cpu on alpha: image and network",
     "network list`; fix pools.cpu.clouds[0].network"),
    (lambda c: c.keypairs.clear(), "pool cpu on alpha: key pair", "keypair list"),
])
def test_missing_cloud_names_fail_with_the_key_to_fix(tmp_path, break_it, subject, words):
    """A flavor, image, network or key pair the cloud lacks fails its row, naming the listing and YAML key."""
    config = make_config(tmp_path, CONFIG.replace("image: debian-12}\n    clouds:\n      - {cloud: alpha",
                                                  "image: debian-12, key_name: hpc}\n"
                                                  "    clouds:\n      - {cloud: alpha"))
    cloud = MemoryCloud("alpha")
    break_it(cloud)
    checks = by_subject(check.cloud_checks(config, "alpha", cloud))
    assert checks[subject].status == check.FAIL and words in checks[subject].fix
    assert "not found" in checks[subject].detail


def test_the_row_for_image_and_network_names_what_the_error_is_about(tmp_path, monkeypatch):
    """The listing and the key to fix come from the error's resource, however the cloud words it."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")

    def refuse(flavor: str, image: str, network: str) -> None:
        raise CloudError(CloudErrorKind.NOT_FOUND, "Network private could not be found.", cloud="alpha",
                         resource=("network", network))

    monkeypatch.setattr(cloud, "resolve_boot", refuse)
    row = by_subject(check.cloud_checks(config, "alpha", cloud))["pool cpu on alpha: image and network"]
    assert row.status == check.FAIL
    assert row.fix == "see `openstack --os-cloud alpha network list`; fix pools.cpu.clouds[0].network"


def test_floating_ip_network_is_looked_up(tmp_path):
    """A pool's floating_ip network that does not exist fails its own row."""
    config = make_config(tmp_path, CONFIG.replace("- {cloud: beta, network: private}\n  gpu",
                                                  "- {cloud: beta, network: private, floating_ip: campus}\n  gpu"))
    cloud = MemoryCloud("beta")
    checks = by_subject(check.cloud_checks(config, "beta", cloud))
    assert checks["pool cpu on beta: floating IP network"].status == check.FAIL
    cloud.networks.add("campus")
    checks = by_subject(check.cloud_checks(config, "beta", cloud))
    assert checks["pool cpu on beta: floating IP network"].status == check.OK


def test_unusable_cloud_fails_once_and_skips_its_pools(tmp_path):
    """Wrong credentials give one FAIL row with the clouds.yaml fix; the cloud's pools are skipped, not failed."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("beta")
    cloud.fail_next("limits", CloudErrorKind.AUTH, message="connect: authentication failed")
    checks = check.cloud_checks(config, "beta", cloud)
    assert checks[0].status == check.FAIL and "auth: connect: authentication failed" in checks[0].detail
    assert "credentials" in checks[0].fix and str(tmp_path / "clouds.yaml") in checks[0].fix
    assert [(c.status, c.subject) for c in checks[1:]] == [(check.SKIP, "pool cpu on beta"),
                                                          (check.SKIP, "pool gpu on beta")]


# ---- templates ----------------------------------------------------------------------------------


def test_user_data_template_must_render_for_every_cloud(tmp_path):
    """A template renders with the boot context; an undefined variable fails the check with file:line."""
    (tmp_path / "ok.j2").write_text("#cloud-config\nhostname: {{ node }}\n# {{ cloud }} {{ site }}\n")
    (tmp_path / "bad.j2").write_text("#cloud-config\n\n{{ munge_key_url }}\n")
    text = CONFIG.replace("image: debian-12}\n    clouds:\n      - {cloud: alpha",
                          "image: debian-12, user_data: ok.j2, user_data_vars: {site: x}}\n"
                          "    clouds:\n      - {cloud: alpha")
    text = text.replace("image: debian-12}\n    clouds:\n      - {cloud: beta",
                        "image: debian-12, user_data: bad.j2}\n    clouds:\n      - {cloud: beta")
    checks = by_subject(check.template_checks(make_config(tmp_path, text)))
    assert checks["pool cpu: user-data ok.j2"].status == check.OK
    bad = checks["pool gpu: user-data bad.j2"]
    assert bad.status == check.FAIL and "bad.j2:3" in bad.detail and "munge_key_url" in bad.detail


# ---- programs and slurmctld ---------------------------------------------------------------------


def test_good_programs_pass(tmp_path):
    """Absolute, executable, not group/world writable, interpreter present: ok."""
    programs = programs_in(tmp_path)
    assert check.program_check("ResumeProgram", str(programs.resume)).status == check.OK


@pytest.mark.parametrize("mode, interpreter, words", [
    (0o775, sys.executable, "group or world writable"),
    (0o757, sys.executable, "group or world writable"),
    (0o644, sys.executable, "not executable"),
    (0o755, "/nonexistent/venv/bin/python3", "/nonexistent/venv/bin/python3"),
])
def test_programs_slurmctld_would_refuse_fail(tmp_path, mode, interpreter, words):
    """Writable by group/others, not executable, or naming a missing interpreter: FAIL with a fix."""
    programs = programs_in(tmp_path, mode, interpreter)
    result = check.program_check("ResumeProgram", str(programs.resume))
    assert result.status == check.FAIL and words in result.detail and result.fix


@pytest.mark.parametrize("path, words", [("(null)", "not set"), ("bin/elastic-resume", "not an absolute path"),
                                         ("/nonexistent/elastic-resume", "No such file")])
def test_unset_relative_or_missing_program_fails(path, words):
    """An unset, relative or absent program path fails."""
    result = check.program_check("ResumeProgram", path)
    assert result.status == check.FAIL and words in result.detail


def test_generated_power_save_block_passes_the_slurm_checks(tmp_path):
    """slurmctld running elastic's own power-save block (22.05 output format) passes every Slurm check."""
    config = make_config(tmp_path)
    programs = programs_in(tmp_path)
    checks = check.slurm_checks(config, running_with(programs))
    assert [c for c in checks if c.status != check.OK] == []


@pytest.mark.parametrize("changes, subject, status", [
    ({"SuspendTime": "INFINITE"}, "SuspendTime", check.FAIL),
    ({"ResumeTimeout": "600 sec"}, "ResumeTimeout", check.FAIL),  # timeouts.boot is 600
    ({"ResumeTimeout": "700 sec"}, "ResumeTimeout", check.WARN),
    ({"SuspendTimeout": "60 sec"}, "SuspendTimeout", check.WARN),
    ({"ResumeFailProgram": "(null)"}, "ResumeFailProgram program", check.FAIL),
    ({"PrivateData": "none"}, "PrivateData", check.WARN),
    ({"TreeWidth": "50"}, "TreeWidth", check.WARN),
    ({"CommunicationParameters": "(null)"}, "CommunicationParameters", check.WARN),
    ({"SlurmctldParameters": "(null)"}, "SlurmctldParameters", check.WARN),
])
def test_power_save_settings_that_break_or_hinder_elastic_are_reported(tmp_path, changes, subject, status):
    """Each bad power-save setting gives its row the right severity and a fix."""
    config = make_config(tmp_path)
    checks = by_subject(check.slurm_checks(config, running_with(programs_in(tmp_path), **changes)))
    assert checks[subject].status == status and checks[subject].fix


def test_registered_addresses_need_cloud_reg_addrs_before_23_11(tmp_path):
    """With slurm.addresses 'none', 22.05 without cloud_reg_addrs/cloud_dns fails; 23.11 needs neither."""
    config = make_config(tmp_path, CONFIG + "slurm: {addresses: none}\n")
    programs = programs_in(tmp_path)
    old = by_subject(check.slurm_checks(config, running_with(programs)))
    assert old["slurm.addresses"].status == check.FAIL and "cloud_reg_addrs" in old["slurm.addresses"].fix
    assert old["SlurmctldParameters"].status == check.OK  # enable_configless is there
    dns = by_subject(check.slurm_checks(config, running_with(programs,
                                                             SlurmctldParameters="cloud_dns,enable_configless")))
    assert dns["slurm.addresses"].status == check.OK and "DNS" in dns["slurm.addresses"].detail
    new = by_subject(check.slurm_checks(config, running_with(programs, **RUNNING_24_11)))
    assert new["slurm.addresses"].status == check.OK and "slurmd registers" in new["slurm.addresses"].detail


def test_pool_nodes_missing_from_slurm_fail(tmp_path):
    """Pool nodes slurmctld does not know fail one grouped row; matching nodes give one ok row."""
    config = make_config(tmp_path)
    fields = {f"cpu-00{i}": {"NodeName": f"cpu-00{i}", "State": "IDLE+CLOUD+POWERED_DOWN", "CPUTot": "1",
                             "RealMemory": "1800", "AvailableFeatures": "cloud", "Partitions": "cloud"}
              for i in range(1, 5)}
    fields.update({f"gpu-{i}": {"NodeName": f"gpu-{i}", "State": "IDLE+CLOUD+POWERED_DOWN", "CPUTot": "1",
                                "RealMemory": "1800", "AvailableFeatures": "(null)"} for i in (1, 2)})
    assert [c.status for c in check.node_checks(config, fields)] == [check.OK]
    del fields["gpu-1"], fields["gpu-2"]
    [row] = check.node_checks(config, fields)
    assert row.status == check.FAIL and row.detail.startswith("gpu-[1-2]: node")


class _Slurm:
    def __init__(self, running, nodes):
        self.running, self.node_fields_result = running, nodes

    def config(self):
        return self.running

    def node_fields(self):
        return self.node_fields_result


def test_without_slurm_the_slurm_checks_are_skipped_and_installed_programs_checked(tmp_path):
    """No slurmctld: one skip row saying so, then the installed programs are checked instead."""
    config = make_config(tmp_path)
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}
    checks = check.run_all(config, clouds, None, slurm_error="scontrol ping: slurmctld does not answer",
                           programs=programs_in(tmp_path, 0o775))
    skip = by_subject(checks)["slurmctld"]
    assert skip.status == check.SKIP and "Slurm checks skipped" in skip.detail and "does not answer" in skip.detail
    installed = [c for c in checks if c.subject.endswith("(installed)")]
    assert len(installed) == 3 and {c.status for c in installed} == {check.FAIL}
    assert check.failed(checks)


def test_all_checks_pass_on_a_matching_setup(tmp_path):
    """Clouds with every name, slurmctld running the generated block and nodes: nothing fails."""
    config = make_config(tmp_path)
    programs = programs_in(tmp_path)
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}
    clouds["alpha"].add("cpu-001", metadata=ours("cpu-001"))
    nodes = {n: {"NodeName": n, "State": "IDLE+CLOUD", "CPUTot": "1", "RealMemory": "1800",
                 "AvailableFeatures": "cloud" if n.startswith("cpu") else "(null)",
                 "Partitions": "cloud" if n.startswith("cpu") else ""}
             for pool in config.pools.values() for n in pool.node_names}
    checks = check.run_all(config, clouds, _Slurm(running_with(programs), nodes), slurm_error=None, programs=programs)
    assert not check.failed(checks), check.render(checks)
    text = check.render(checks)
    assert text.splitlines()[0].split() == ["RESULT", "CHECK", "DETAIL", "FIX"]
    assert "1 servers of ours running" in by_subject(checks)["cloud alpha: quota"].detail


def test_history_rows_report_what_the_runs_found_per_cloud(tmp_path):
    """A cloud that did not answer a run, a pool's permanent error and pending deletes each show
    as a warning row for that cloud; a cloud with none gets no row."""
    from elastic.admin.check import WARN, history_checks
    from elastic.testing import MemoryHistory

    config = make_config(tmp_path)
    history = MemoryHistory()
    history.mark_cloud_down("alpha", "alpha: unreachable: no answer in time", 900.0)
    history.record_problem("alpha", "cpu", "auth", "connect: authentication failed", 950.0)
    history.add_pending_deletes({"cpu-001": {"alpha": "suspend"}, "cpu-002": {"alpha": "suspend"}}, 960.0)
    (row,) = history_checks(config, history, now=1000.0)
    assert row.status == WARN and row.subject == "cloud alpha: runs"
    assert "did not answer a run" in row.detail and "pool cpu: auth: connect: authentication failed" in row.detail
    assert "2 delete(s) pending for cpu-[001-002]" in row.detail and "reconcile --apply" in row.fix


# ---- judged by the running Slurm version -----------------------------------------------------------


@pytest.mark.parametrize("name", list(RUNNING))
@pytest.mark.parametrize("addresses", ["scontrol", "none"])
def test_each_version_running_its_own_block_passes(tmp_path, name, addresses):
    """Each version running the block slurm-conf writes for it passes every Slurm check, and is
    not told to add what it no longer needs."""
    text = CONFIG + ("slurm: {addresses: none}\n" if addresses == "none" else "")
    config = make_config(tmp_path, text)
    programs = programs_in(tmp_path)
    version = check.running_version(running_with(programs, **RUNNING[name]))[0]
    block = dict(line.split("=", 1) for line in slurm_conf_lines.power_save_lines(config, programs, version=version))
    running = running_with(programs, **RUNNING[name], SlurmctldParameters=block["SlurmctldParameters"])
    checks = check.slurm_checks(config, running)
    assert [c for c in checks if c.status != check.OK] == [], check.render(checks)
    assert checks[0].detail == f"answers, Slurm {running['SLURM_VERSION']}"
    subjects = {c.subject for c in checks}
    assert ("PrivateData" in subjects) is False  # no row when all is well
    assert "slurm.addresses" in subjects


@pytest.mark.parametrize("name", ["23.11", "24.11", "26.05"])
def test_defunct_options_are_flagged_remove_from_23_11(tmp_path, name):
    """A 22.05 block kept on 23.11+: NoAddrCache and cloud_reg_addrs are 'remove' warnings; nothing
    asks to add NoAddrCache, TreeWidth or PrivateData; TreeWidth=65533 is left alone."""
    config = make_config(tmp_path, CONFIG + "slurm: {addresses: none}\n")
    running = running_with(programs_in(tmp_path), **dict(RUNNING[name], CommunicationParameters="NoAddrCache",
                                                         TreeWidth="65533",
                                                         SlurmctldParameters="cloud_reg_addrs,enable_configless"))
    rows = {c.subject: c for c in check.slurm_checks(config, running) if c.status != check.OK}
    assert set(rows) == {"CommunicationParameters: NoAddrCache", "SlurmctldParameters: cloud_reg_addrs"}
    assert {c.status for c in rows.values()} == {check.WARN}
    assert (rows["CommunicationParameters: NoAddrCache"].fix
            == "remove NoAddrCache from CommunicationParameters in slurm.conf")
    assert rows["SlurmctldParameters: cloud_reg_addrs"].fix.startswith("remove cloud_reg_addrs")
    assert "defunct" in rows["CommunicationParameters: NoAddrCache"].detail


@pytest.mark.parametrize("name, expected", [
    ("22.05", {"PrivateData", "CommunicationParameters", "TreeWidth"}),
    ("23.02", {"CommunicationParameters", "TreeWidth"}),
    ("23.11", set()), ("24.11", set()), ("26.05", set()),
])
def test_what_each_version_is_told_to_add(tmp_path, name, expected):
    """A slurmctld with none of the versioned settings: PrivateData=cloud is asked for before 23.02,
    NoAddrCache and TreeWidth=65533 before 23.11, nothing from 23.11 (no 'add NoAddrCache' on 24.11)."""
    config = make_config(tmp_path)
    running = running_with(programs_in(tmp_path), **dict(RUNNING[name], PrivateData="none",
                                                         CommunicationParameters="(null)", TreeWidth="16"))
    rows = {c.subject: c for c in check.slurm_checks(config, running) if c.status != check.OK}
    assert set(rows) == expected
    assert all(c.status == check.WARN and c.fix.startswith(("set", "add")) for c in rows.values())


@pytest.mark.parametrize("name", list(RUNNING))
def test_slurm_addresses_advice_per_version(tmp_path, name):
    """slurm.addresses scontrol is fine on every version; from 23.11 the row says the address only
    bridges until slurmd registers, and 'none' needs neither cloud_reg_addrs nor cloud_dns."""
    programs = programs_in(tmp_path)
    scontrol = by_subject(check.slurm_checks(make_config(tmp_path), running_with(programs, **RUNNING[name])))
    none = by_subject(check.slurm_checks(make_config(tmp_path, CONFIG + "slurm: {addresses: none}\n"),
                                         running_with(programs, **RUNNING[name])))
    from_23_11 = name in ("23.11", "24.11", "26.05")
    assert scontrol["slurm.addresses"].status == check.OK
    assert ("bridges until then" in scontrol["slurm.addresses"].detail) is from_23_11
    assert none["slurm.addresses"].status == (check.OK if from_23_11 else check.FAIL)


@pytest.mark.parametrize("shown", ["banana", None])
def test_unreadable_version_warns_and_is_judged_as_22_05(tmp_path, shown):
    """A SLURM_VERSION that is missing or not a version: a warning row, then 22.05's rules."""
    running = running_with(programs_in(tmp_path), PrivateData="none")
    if shown is None:
        del running["SLURM_VERSION"]
    else:
        running["SLURM_VERSION"] = shown
    rows = by_subject(check.slurm_checks(make_config(tmp_path), running))
    assert rows["slurmctld"].status == check.WARN and "judged as Slurm 22.05" in rows["slurmctld"].detail
    assert rows["PrivateData"].status == check.WARN


def test_run_all_judges_nodes_by_the_running_version(tmp_path):
    """A pool node 24.11 does not show is 'not in slurm.conf' (no PrivateData hint from 23.02)."""
    config = make_config(tmp_path)
    programs = programs_in(tmp_path)
    nodes = {n: {"NodeName": n, "State": "IDLE+CLOUD", "CPUTot": "1", "RealMemory": "1800",
                 "AvailableFeatures": "cloud" if n.startswith("cpu") else "(null)",
                 "Partitions": "cloud" if n.startswith("cpu") else ""}
             for pool in config.pools.values() for n in pool.node_names if n != "gpu-2"}
    checks = check.run_all(config, {}, _Slurm(running_with(programs, **RUNNING_24_11), nodes), slurm_error=None,
                           programs=programs)
    [row] = [c for c in checks if c.subject == "slurm.conf nodes"]
    assert row.status == check.FAIL and row.detail.endswith("slurmctld has not shown (not in slurm.conf)")

"""The chaos soak's Slurm model: transitions as slurmctld makes them, and output the product's own
parsers (elastic.slurm) read. The stand-in scontrol executable is tested in tests/integration/test_chaos.py."""

from __future__ import annotations

import pytest

from elastic.lab.chaos.model import ScontrolError, SlurmModel, Timing
from elastic.slurm import parse_nodes, parse_show_config

TIMING = Timing(resume_timeout=30, suspend_timeout=10, slurmd_timeout=20)
T0 = 1_800_000_000.0


def model(*names: str) -> SlurmModel:
    return SlurmModel.fresh(names or ("cn1", "cn2"), TIMING)


def never(node: str, since: float = 0.0) -> bool:
    return False


def always(node: str, since: float = 0.0) -> bool:
    return True


def state(m: SlurmModel, name: str = "cn1") -> str:
    return m.nodes[name].state


def test_a_fresh_node_is_idle_powered_down_and_parses_as_the_product_reads_it() -> None:
    nodes = parse_nodes(model().show_node())
    assert nodes["cn1"].state == "IDLE+CLOUD+POWERED_DOWN"
    assert nodes["cn1"].powered_down and nodes["cn1"].cloud and not nodes["cn1"].down


def test_power_up_becomes_powering_up_and_one_resume_call_then_registration_makes_it_idle() -> None:
    m = model()
    m.update(["nodename=cn[1-2]", "state=power_up"], T0)
    calls = m.power_save_pass(T0 + 1, never, never)
    assert calls.resume == ["cn1", "cn2"] and not calls.suspend
    assert state(m) == "IDLE+CLOUD+POWERING_UP"
    m.power_save_pass(T0 + 2, lambda node, since: node == "cn1" and since == T0 + 1, never)
    assert state(m) == "IDLE+CLOUD" and state(m, "cn2") == "IDLE+CLOUD+POWERING_UP"


def test_a_vm_booted_before_the_power_up_request_does_not_register() -> None:
    m = model()
    m.update(["nodename=cn1", "state=power_up"], T0)
    m.power_save_pass(T0 + 1, never, never)
    m.power_save_pass(T0 + 2, lambda node, since: since < T0, never)
    assert state(m) == "IDLE+CLOUD+POWERING_UP"


def test_a_repeated_power_up_runs_the_resume_program_again_without_restarting_the_clock() -> None:
    m = model()
    m.update(["nodename=cn1", "state=power_up"], T0)
    m.power_save_pass(T0, never, never)
    m.update(["nodename=cn1", "state=power_up"], T0 + 5)
    assert m.power_save_pass(T0 + 6, never, never).resume == ["cn1"]
    assert m.nodes["cn1"].boot_req == T0


def test_resume_timeout_leaves_down_powered_down_with_slurms_reason_and_calls_resume_fail() -> None:
    m = model()
    m.update(["nodename=cn1", "state=power_up"], T0)
    m.power_save_pass(T0, never, never)
    calls = m.power_save_pass(T0 + 31, never, never)
    assert calls.resume_fail == ["cn1"]
    assert state(m) == "DOWN+CLOUD+POWERED_DOWN" and m.nodes["cn1"].reason == "ResumeTimeout reached"
    m.update(["nodename=cn1", "state=resume"], T0 + 32)
    assert state(m) == "IDLE+CLOUD+POWERED_DOWN" and m.nodes["cn1"].reason == ""


def test_resume_of_a_node_that_is_not_down_is_refused_as_scontrol_refuses_it() -> None:
    m = model()
    with pytest.raises(ScontrolError, match="Invalid node state specified"):
        m.update(["nodename=cn1", "state=resume"], T0)
    assert state(m) == "IDLE+CLOUD+POWERED_DOWN"


def test_down_needs_a_reason_and_unknown_nodes_are_refused() -> None:
    m = model()
    with pytest.raises(ScontrolError, match="must specify a reason"):
        m.update(["nodename=cn1", "state=down"], T0)
    with pytest.raises(ScontrolError, match="Invalid node name"):
        m.update(["nodename=zz9", "state=down", "reason=x"], T0)


def test_power_down_force_of_a_booting_node_runs_suspend_and_ends_idle_powered_down() -> None:
    m = model()
    m.update(["nodename=cn1", "state=power_up"], T0)
    m.power_save_pass(T0, never, never)
    m.update(["nodename=cn1", "state=power_down_force", "reason=elastic: quota: full"], T0 + 1)
    assert state(m) == "IDLE+CLOUD+POWER_DOWN"
    assert m.power_save_pass(T0 + 2, never, never).suspend == ["cn1"]
    assert state(m) == "IDLE+CLOUD+POWERING_DOWN"
    m.update(["nodename=cn1", "state=power_down_force"], T0 + 3)  # ignored: already powering down
    assert m.power_save_pass(T0 + 4, never, never).suspend == []
    m.power_save_pass(T0 + 13, never, never)
    assert state(m) == "IDLE+CLOUD+POWERED_DOWN"


def test_power_down_force_then_down_a_permanent_resume_failure_ends_down_powered_down_with_its_reason() -> None:
    m = model()
    m.update(["nodename=cn1", "state=power_up"], T0)
    m.power_save_pass(T0, never, never)
    m.update(["nodename=cn1", "state=power_down_force", "reason=elastic: auth: bad"], T0 + 1)
    m.update(["nodename=cn1", "state=down", "reason=elastic: auth: bad"], T0 + 1)
    m.power_save_pass(T0 + 2, never, never)
    m.power_save_pass(T0 + 13, never, never)
    node = parse_nodes(m.show_node())["cn1"]
    assert node.state == "DOWN+CLOUD+POWERED_DOWN" and node.reason == "elastic: auth: bad"


def test_plain_power_down_waits_while_the_node_powers_up() -> None:
    m = model()
    m.update(["nodename=cn1", "state=power_up"], T0)
    m.power_save_pass(T0, never, never)
    m.update(["nodename=cn1", "state=power_down"], T0 + 1)
    assert m.power_save_pass(T0 + 2, never, never).suspend == []
    assert "POWERING_UP" in m.nodes["cn1"].flags


def test_a_powered_up_node_whose_vm_is_gone_goes_down_not_responding_after_slurmd_timeout() -> None:
    m = model()
    m.update(["nodename=cn1", "state=power_up"], T0)
    m.power_save_pass(T0, never, never)
    m.power_save_pass(T0 + 1, always, always)
    m.power_save_pass(T0 + 10, never, never)
    assert state(m) == "IDLE+CLOUD"
    m.power_save_pass(T0 + 22, never, never)
    assert state(m) == "DOWN+CLOUD+NOT_RESPONDING" and m.nodes["cn1"].reason == "Not responding"


def test_addresses_are_matched_by_position() -> None:
    m = model()
    m.update(["nodename=cn2,cn1", "nodeaddr=10.0.0.2,10.0.0.1", "nodehostname=b,a"], T0)
    nodes = parse_nodes(m.show_node())
    assert (nodes["cn1"].addr, nodes["cn1"].hostname, nodes["cn2"].addr) == ("10.0.0.1", "a", "10.0.0.2")
    with pytest.raises(ScontrolError):
        m.update(["nodename=cn[1-2]", "nodeaddr=10.0.0.9"], T0)


def test_show_config_reads_as_the_product_reads_it() -> None:
    config = parse_show_config(model().show_config(T0))
    assert config["SLURM_VERSION"] == "22.05.8" and config["ResumeTimeout"] == "30 sec"


def test_a_resume_timeout_brought_forward_does_not_let_an_older_vm_register() -> None:
    """The soak's early ResumeTimeout moves the deadline, not the power-up request: a VM booted
    before the request still does not register (the CI soak once took a deleted node's VM for it)."""
    m = model()
    m.update(["nodename=cn1", "state=power_up"], T0)
    m.power_save_pass(T0, never, never)
    m.expire("cn1", T0 + 1)
    calls = m.power_save_pass(T0 + 2, lambda node, since: since < T0, never)
    assert calls.resume_fail == ["cn1"] and state(m) == "DOWN+CLOUD+POWERED_DOWN"

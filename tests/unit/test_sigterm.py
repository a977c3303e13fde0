"""SIGTERM during a program run: from 23.02 slurmscriptd sends it to a program still running after
max(ResumeTimeout, SuspendTimeout) (then SIGKILL 10 ms later). The run logs `<command>.sigterm` with
the nodes in flight at once, and every node not yet handed to Slurm gets an `elastic: sigterm:`
state; servers already created are left (Slurm's power-down runs the SuspendProgram for them).

The signal is sent to this process's main thread from the flow, as slurmscriptd's killpg would.
"""

from __future__ import annotations

import importlib
import json
import signal
import threading
import time

import pytest

from elastic import cli, process, wiring
from elastic.power.services import Services
from elastic.testing import MemoryCloud, MemoryHistory, RecordingSlurm

from tests.support.power import CONFIG

NODES = ["cpu-001", "cpu-002", "cpu-003", "cpu-004"]


def sigterm_main_thread(after: float = 0.0) -> None:
    """Send SIGTERM to the main thread, now or from a timer thread `after` seconds from now."""
    main = threading.main_thread().ident

    def send() -> None:
        signal.pthread_kill(main, signal.SIGTERM)

    if after:
        threading.Timer(after, send).start()
    else:
        send()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A config whose runs get memory clouds and a recording Slurm; `site.events()` reads the log."""
    path = tmp_path / "elastic.yaml"
    path.write_text(CONFIG + f"log_file: {tmp_path / 'elastic.log'}\nstate_dir: {tmp_path / 'state'}\n")
    slurm = RecordingSlurm()
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}

    def make_services(config, log):
        return Services(config=config, clouds=clouds, slurm=slurm, history=MemoryHistory(), log=log)

    monkeypatch.setattr(wiring, "make_services", make_services)
    monkeypatch.setattr(wiring, "make_slurm", lambda config: slurm)

    class Site:
        def events(self, name: str | None = None) -> list[dict]:
            lines = (tmp_path / "elastic.log").read_text().splitlines()
            found = [json.loads(line) for line in lines if line.startswith("{")]
            return [e for e in found if name is None or e["event"] == name]

    s = Site()
    s.path, s.slurm, s.clouds = path, slurm, clouds
    return s


def run(site, command: str, hostlist: str = "cpu-[001-004]") -> int:
    return cli.run_power(command, hostlist, str(site.path))


@pytest.mark.parametrize("command, states", [
    ("resume", ("power_down_force",)), ("suspend", ("down",)), ("resume-fail", ("down",)),
])
def test_sigterm_during_a_blocked_flow_gives_every_node_an_elastic_state(site, monkeypatch, command, states):
    """A flow blocked in a long wait is interrupted by SIGTERM: the log says `<command>.sigterm`
    with every node in flight and where the run was, each node gets its fail-closed state with an
    `elastic: sigterm:` reason, the run ends with exit 1 in well under the wait, and the previous
    SIGTERM handler is back."""
    def blocked(nodes, svc, jobs=()):
        sigterm_main_thread(after=0.2)
        time.sleep(30)
        pytest.fail("the SIGTERM did not interrupt the flow")

    flow = {"resume": "resume", "suspend": "suspend", "resume-fail": "resume_fail"}[command]
    monkeypatch.setattr(importlib.import_module(f"elastic.power.{flow}"), flow, blocked)
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert run(site, command) == 1
    assert time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGTERM) is before
    [sigterm] = site.events(f"{command}.sigterm")
    assert sigterm["level"] == "error" and sigterm["in_flight"] == NODES and sigterm["count"] == 4
    assert sigterm["handed"] == 0 and sigterm["seconds"] >= 0.1
    assert any("test_sigterm.py" in frame and "blocked" in frame for frame in sigterm["where"])
    [closed] = site.events(f"{command}.failed_closed")
    assert closed["nodes"] == NODES and closed["reason"].startswith("elastic: sigterm: run ")
    assert "stopped by SIGTERM after" in closed["reason"] and "exception" not in closed
    assert [(names, state) for names, state, _ in site.slurm.states] == [(tuple(NODES), state) for state in states]
    assert all(site.slurm.state_of(node)[1].startswith("elastic: sigterm:") for node in NODES)
    assert not site.events(f"{command}.done")


def test_nodes_already_handed_to_slurm_are_left_alone(site, monkeypatch):
    """Nodes whose address or state this run already sent are not in flight: only the others get
    the sigterm state."""
    def half_done(nodes, svc, jobs=()):
        svc.slurm.update_addresses({"cpu-001": "10.0.0.1"})
        svc.slurm.set_state(["cpu-002"], "power_down_force", "elastic: quota: alpha: no room")
        sigterm_main_thread(after=0.1)
        time.sleep(30)

    monkeypatch.setattr("elastic.power.resume.resume", half_done)
    assert run(site, "resume") == 1
    [sigterm] = site.events("resume.sigterm")
    assert sigterm["in_flight"] == ["cpu-003", "cpu-004"] and sigterm["handed"] == 2
    assert site.slurm.states[-1][:2] == (("cpu-003", "cpu-004"), "power_down_force")
    assert site.slurm.state_of("cpu-002")[1] == "elastic: quota: alpha: no room"
    assert site.slurm.state_of("cpu-001") is None


def test_sigterm_during_an_scontrol_call_waits_for_it(site, monkeypatch):
    """A SIGTERM that comes while an scontrol call runs is logged at once but raised only when the
    call has returned: its nodes count as handed, the rest are failed closed."""
    class SlowSlurm(RecordingSlurm):
        def update_addresses(self, addrs, hostnames=None):
            sigterm_main_thread()
            time.sleep(0.2)  # scontrol still talking to slurmctld
            super().update_addresses(addrs, hostnames)

    slow = SlowSlurm()
    monkeypatch.setattr(wiring, "make_slurm", lambda config: slow)
    site.slurm = slow
    monkeypatch.setattr(wiring, "make_services",
                        lambda config, log: Services(config=config, clouds=site.clouds, slurm=slow,
                                                     history=MemoryHistory(), log=log))
    after_call = []

    def flow(nodes, svc, jobs=()):
        svc.slurm.update_addresses({"cpu-001": "10.0.0.1", "cpu-002": "10.0.0.2"})
        after_call.append("went on")  # never: Terminated comes as the call returns

    monkeypatch.setattr("elastic.power.resume.resume", flow)
    assert run(site, "resume") == 1
    assert slow.addresses == [{"cpu-001": "10.0.0.1", "cpu-002": "10.0.0.2"}] and after_call == []
    [sigterm] = site.events("resume.sigterm")
    assert sigterm["in_flight"] == NODES  # logged while the call still ran
    [closed] = site.events("resume.failed_closed")
    assert closed["nodes"] == ["cpu-003", "cpu-004"]


def test_a_second_sigterm_does_not_interrupt_the_cleanup(site, monkeypatch):
    """Only the first SIGTERM raises; one that comes while the flow unwinds is ignored."""
    cleaned = []

    def flow(nodes, svc, jobs=()):
        try:
            sigterm_main_thread(after=0.1)
            time.sleep(30)
        finally:
            sigterm_main_thread()
            time.sleep(0.05)
            cleaned.append(True)

    monkeypatch.setattr("elastic.power.suspend.suspend", flow)
    assert run(site, "suspend") == 1
    assert cleaned == [True] and len(site.events("suspend.sigterm")) == 1


def test_real_resume_interrupted_while_servers_boot(site, monkeypatch):
    """The real resume flow: two servers turn ACTIVE and their addresses reach Slurm, two stay in
    BUILD; SIGTERM during the wait between polls puts only those two back (power_down_force, so
    Slurm's SuspendProgram deletes their servers) and leaves every server where it is."""
    site.clouds["alpha"].stuck_in_build = {"cpu-003", "cpu-004"}
    services = {}

    def make_services(config, log):
        def sleep(seconds):
            sigterm_main_thread(after=0.1)
            time.sleep(seconds + 30)

        services["svc"] = Services(config=config, clouds=site.clouds, slurm=site.slurm, history=MemoryHistory(),
                                   log=log, sleep=sleep)
        return services["svc"]

    monkeypatch.setattr(wiring, "make_services", make_services)
    assert run(site, "resume") == 1
    assert [sorted(batch) for batch in site.slurm.addresses] == [["cpu-001", "cpu-002"]]
    [sigterm] = site.events("resume.sigterm")
    assert sigterm["in_flight"] == ["cpu-003", "cpu-004"]
    assert site.slurm.states == [(("cpu-003", "cpu-004"), "power_down_force", site.slurm.states[0][2])]
    assert sorted(s.name for s in site.clouds["alpha"].live()) == NODES  # nothing deleted by the SIGTERM path
    assert not [call for call in site.clouds["alpha"].calls if call[0] == "delete"]


def test_terminated_is_not_an_exception():
    """`except Exception` (a cloud call's translation, the resume flow's catch-all) cannot swallow it."""
    assert issubclass(process.Terminated, BaseException) and not issubclass(process.Terminated, Exception)


def test_sigterm_outside_a_run_is_not_handled():
    """Outside `sigterm_raises` the handler it installed is gone (the previous one is back)."""
    before = signal.getsignal(signal.SIGTERM)
    with process.sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_uninterrupted_holds_the_sigterm_until_the_block_ends():
    """Inside `uninterrupted` the SIGTERM is reported at once and raised when the block ends, even
    when the block raised something else; later SIGTERMs only count."""
    reported = []
    finished = []
    with pytest.raises(process.Terminated) as caught:  # one level per context, on purpose
        with process.sigterm_raises(lambda seconds, frame: reported.append(seconds)) as state:
            with process.uninterrupted():
                with process.uninterrupted():
                    sigterm_main_thread()
                    time.sleep(0.05)
                    assert len(reported) == 1
                sigterm_main_thread()
                time.sleep(0.05)
                finished.append(True)
    assert finished == [True] and state.signals == 2 and len(reported) == 1
    with pytest.raises(process.Terminated) as caught, process.sigterm_raises():
        with process.uninterrupted():
            sigterm_main_thread()
            raise ValueError("scontrol failed")
    assert isinstance(caught.value.__context__, ValueError)


def test_uninterrupted_in_a_worker_thread_is_a_no_op():
    """Signals reach Python's main thread only: a worker's block neither holds nor raises anything."""
    done = []

    def work():
        with process.uninterrupted():
            done.append(True)

    with process.sigterm_raises() as state:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        assert state.held == 0
    assert done == [True]

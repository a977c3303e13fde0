"""Command line: the three Slurm programs and the admin's `elastic` command.

Entry points stay thin: parse, load config, build collaborators (wiring.py), call one flow or
command, map the result to an exit code: 0 all served, 1 some node failed (each has its Slurm
reason), 2 usage or config error (no cloud call, no Slurm change).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from elastic import process
from elastic.errors import ConfigError, ElasticError, SlurmError, UsageError

if TYPE_CHECKING:  # imported where used: a program's first steps must not wait for them
    from structlog.typing import FilteringBoundLogger

    from elastic.config import Config
    from elastic.power.outcome import Failure, Outcome
    from elastic.power.services import Services, SlurmControl
    from elastic.resume_request import ResumeJob

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# ---- the three programs slurmctld runs ------------------------------------------------------


def resume_main(argv: Sequence[str] | None = None) -> int:
    return _power_main("resume", argv)


def suspend_main(argv: Sequence[str] | None = None) -> int:
    return _power_main("suspend", argv)


def resume_fail_main(argv: Sequence[str] | None = None) -> int:
    return _power_main("resume-fail", argv)


# What the programs run (resume.py, suspend.py, resume_fail.py and the console scripts): the run,
# then an exit without the interpreter's teardown (process.exit_now).


def resume_program() -> NoReturn:
    process.exit_now(resume_main())


def suspend_program() -> NoReturn:
    process.exit_now(suspend_main())


def resume_fail_program() -> NoReturn:
    process.exit_now(resume_fail_main())


def _power_main(command: str, argv: Sequence[str] | None) -> int:
    process.pause_gc()  # until run_power has imported what the run needs
    try:
        return _parse_and_run(command, argv)
    finally:
        process.resume_gc()


def _parse_and_run(command: str, argv: Sequence[str] | None) -> int:
    process.repair_process()
    # SLURM_RESUME_FILE is a /proc/<pid>/fd/N of slurmctld's: valid only while it keeps it open.
    resume_file_text, resume_file_error = _read_resume_file_now() if command == "resume" else (None, None)
    parser = argparse.ArgumentParser(prog=f"elastic-{command}", description=_POWER_HELP[command])
    parser.add_argument("hostlist", help="Slurm hostlist, e.g. cpu-[001-004],gpu7")
    parser.add_argument("--config", help="pool YAML (default: $ELASTIC_CONFIG, elastic.yaml beside $SLURM_CONF, "
                                         "/etc/slurm/elastic.yaml)")
    args = parser.parse_args(argv)
    return run_power(command, args.hostlist, args.config, resume_file_text, resume_file_error)


_POWER_HELP = {
    "resume": "Boot OpenStack servers for Slurm nodes (slurm.conf ResumeProgram).",
    "suspend": "Delete the OpenStack servers of Slurm nodes (slurm.conf SuspendProgram).",
    "resume-fail": "Clean up nodes that failed to resume (slurm.conf ResumeFailProgram).",
}


def _read_resume_file_now() -> tuple[str | None, str | None]:
    path = os.environ.get("SLURM_RESUME_FILE")
    if not path:
        return None, None
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return None, f"cannot read SLURM_RESUME_FILE {path}: {exc.strerror or exc}"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        # The node list in argv is what counts; the file only tells which jobs asked.
        return None, f"SLURM_RESUME_FILE {path} is not UTF-8 text (byte {exc.start})"


def run_power(command: str, hostlist: str, config_arg: str | None, resume_file_text: str | None = None,
              resume_file_error: str | None = None) -> int:
    """One program run: bad input (config, hostlist) is refused with exit 2 and no side effect;
    from then on the run fails closed: whatever breaks, every node gets a Slurm state whose reason
    starts with `elastic:` (exit 1). A SIGTERM (slurmscriptd's at the timeout, from 23.02) is
    logged at once with the nodes in flight and ends the run the same way for those nodes."""
    from elastic.config import config_from_env

    interactive = not process.started_detached() and sys.stderr.isatty()
    try:
        config = config_from_env(config_arg)
    except ConfigError as error:
        return _fatal(error)
    process.send_output_to(config.log_file)
    from elastic import hostlists, logs

    run_id = logs.new_run_id()
    log = logs.configure_logging(log_file=config.log_file, run_id=run_id, command=command,
                                 interactive=interactive, level=config.log_level)
    try:
        # Slurm never asks for more nodes than slurm.conf has, which elastic slurm-conf writes from
        # the pools: a longer hostlist is a mistake, refused before it is expanded.
        nodes = hostlists.expand(hostlist, limit=max(len(config.node_owners), 1))
        jobs = _jobs_of(resume_file_text, resume_file_error, log)
    except UsageError as error:
        log.error(f"{command}.refused", error=str(error))
        return _fatal(error)
    log.info(f"{command}.start", nodes=nodes, count=len(nodes),
             jobs=[{"job_id": job.job_id, "nodes": list(job.nodes), "partition": job.partition} for job in jobs])
    handed: set[str] = set()  # nodes this run has already handed to Slurm (address sent, state set)

    def on_sigterm(seconds: float, frame: FrameType | None) -> None:
        # Runs first, before anything unwinds: from 23.02 SIGKILL follows SIGTERM within 10 ms.
        in_flight = [node for node in nodes if node not in handed]
        log.error(f"{command}.sigterm", in_flight=in_flight, count=len(in_flight), handed=len(handed),
                  seconds=round(seconds, 1), where=_where(frame),
                  detail="from 23.02 slurmscriptd sends SIGTERM to a program still running after "
                         "max(ResumeTimeout, SuspendTimeout), then SIGKILL 10 ms later")

    try:
        with process.sigterm_raises(on_sigterm):
            from elastic.wiring import make_services

            services = make_services(config, log)
            services.slurm = _HandedToSlurm(services.slurm, handed)
            from elastic.cloud import import_sdk

            import_sdk()  # the last of start-up's imports (see process.pause_gc)
            process.resume_gc()
            outcome = _flow(command, jobs)(nodes, services)
    except process.Terminated as stop:
        # Nodes Slurm already got an address or a state for are left as they are; the servers
        # this run created are not deleted here (see _FAIL_CLOSED_STATES).
        from elastic.power.outcome import Failure

        in_flight = [node for node in nodes if node not in handed]
        failure = Failure("sigterm", f"run {run_id} stopped by SIGTERM after {stop.seconds:.0f}s")
        return _fail_closed(command, in_flight, stop, config, log, failure=failure)
    except Exception as error:  # noqa: BLE001 - fail closed: a local fault or our own bug
        return _fail_closed(command, nodes, error, config, log)
    log.info(f"{command}.done", served=len(outcome.served), failed=outcome.failures_by_kind(),
             cancelled=sorted(outcome.cancelled), deferred=outcome.deferred, exit=outcome.exit_code)
    if interactive or not process.started_detached():
        _print_outcome(outcome)
    # After the outcome: leaving the shared pacing is advice for the next runs, and nothing it
    # meets (a pacing.json edited by hand, a SIGTERM while it waits for the file's lock) may turn
    # a finished run into a failed one.
    from elastic.wiring import close_clouds

    with contextlib.suppress(Exception):
        close_clouds(services.clouds)
    return outcome.exit_code


def _flow(command: str, jobs: Sequence[ResumeJob]) -> Callable[[Sequence[str], Services], Outcome]:
    """The command's flow, its module imported alone: a suspend does not load the resume flow."""
    if command == "resume":
        from elastic.power.resume import resume

        return functools.partial(resume, jobs=jobs)
    if command == "suspend":
        from elastic.power.suspend import suspend

        return suspend
    from elastic.power.resume_fail import resume_fail

    return resume_fail


class _HandedToSlurm:
    """The flow's Slurm, noting the nodes whose address or state has reached slurmctld, so that a
    SIGTERM leaves those alone. A SIGTERM during such a call is held back until it is noted."""

    def __init__(self, slurm: SlurmControl, handed: set[str]):
        self._slurm = slurm
        self._handed = handed

    def set_state(self, names: Sequence[str], state: str, reason: str | None = None) -> None:
        with process.uninterrupted():
            self._slurm.set_state(names, state, reason)
            self._handed.update(names)

    def update_addresses(self, addrs: Mapping[str, str], hostnames: Mapping[str, str] | None = None) -> None:
        with process.uninterrupted():
            self._slurm.update_addresses(addrs, hostnames)
            self._handed.update(addrs)


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _where(frame: FrameType | None, depth: int = 8) -> list[str]:
    """Where the main thread was when the signal came, innermost first (`boot.py:331 _wait`): the
    innermost frame, then elastic's own (not the SDK's internals). No source lines are read: this
    runs inside the SIGTERM handler."""
    found: list[str] = []
    innermost = True
    while frame is not None and len(found) < depth:
        path = frame.f_code.co_filename
        if innermost or path.startswith(_PACKAGE):
            found.append(f"{os.path.basename(path)}:{frame.f_lineno} {frame.f_code.co_name}")
        innermost = False
        frame = frame.f_back
    return found


# The state a node gets when its run broke: resume requeues the job now (the node returns to idle~,
# and Slurm's SuspendProgram deletes any server this run created for it); after suspend or
# resume-fail nobody knows whether the server is gone, so the node stays DOWN (elastic status
# shows a server left as an orphan, elastic reconcile deletes it).
_FAIL_CLOSED_STATES = {"resume": ("power_down_force",), "suspend": ("down",), "resume-fail": ("down",)}


def _fail_closed(command: str, nodes: list[str], error: BaseException, config: Config, log: FilteringBoundLogger, *,
                 failure: Failure | None = None) -> int:
    from elastic.power.outcome import internal_failure
    from elastic.wiring import make_slurm

    if failure is None:
        failure = internal_failure(error)
        log.error(f"{command}.failed_closed", nodes=nodes, reason=failure.reason,
                  exc_info=not isinstance(error, ElasticError))
    else:
        log.error(f"{command}.failed_closed", nodes=nodes, reason=failure.reason)
    states = _FAIL_CLOSED_STATES[command]
    if nodes:
        try:
            slurm = make_slurm(config)
            for state in states:
                slurm.set_state(nodes, state, failure.reason)
            log.info("slurm.set_state", nodes=nodes, state=",".join(states), reason=failure.reason)
        except SlurmError as slurm_error:
            log.error("slurm.set_state", ok=False, nodes=nodes, state=",".join(states), error=str(slurm_error))
    print(f"elastic: error: {failure.reason}", file=sys.stderr)
    return EXIT_FAILED


def _jobs_of(text: str | None, error: str | None, log: FilteringBoundLogger) -> tuple[ResumeJob, ...]:
    """The jobs behind a resume, for placing their nodes together. The node list in argv is
    authoritative: a resume file that cannot be read or parsed only costs the grouping (every
    node is then placed on its own), never the resume."""
    if error:
        log.warning("resume.resume_file_unreadable", error=error, effect="nodes placed one by one")
        return ()
    if text is None:
        return ()
    from elastic.resume_request import parse_resume_file

    try:
        request = parse_resume_file(text)
    except UsageError as exc:
        log.warning("resume.resume_file_invalid", error=str(exc), effect="nodes placed one by one")
        return ()
    return request.jobs


def _print_outcome(outcome: Outcome) -> None:
    for node, address in sorted(outcome.served.items()):
        print(f"{node}: ok{' ' + address if address else ''}", file=sys.stderr)
    for node in sorted(outcome.cancelled):
        print(f"{node}: cancelled (deleted while booting)", file=sys.stderr)
    for node, clouds in sorted(outcome.deferred.items()):
        print(f"{node}: delete deferred on {', '.join(clouds)} (retried by the next run or elastic reconcile; "
              "the log says why)", file=sys.stderr)
    for node, failure in sorted(outcome.failed.items()):
        print(f"{node}: failed: {failure.reason}", file=sys.stderr)


def _fatal(error: ElasticError) -> int:
    print(f"elastic: error: {error}", file=sys.stderr)
    return EXIT_USAGE


# ---- the admin's command --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="elastic", description="Slurm power saving on OpenStack clouds.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("resume", "suspend", "resume-fail"):
        power_parser = sub.add_parser(name, help=_POWER_HELP[name])
        power_parser.add_argument("hostlist")
        power_parser.add_argument("--config")
    from elastic.admin.cli import add_admin_commands

    add_admin_commands(sub)
    lab = sub.add_parser("lab", help="the local world for tests and demos")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, metavar="PART")
    lab_sub.add_parser("cloud", help="serve the OpenStack emulator", add_help=False)
    lab_sub.add_parser("chaos", help="the chaos soak: random calls, kills and cloud faults, then the invariants",
                       add_help=False)
    sub.add_parser("demo", help="run the local demo: emulator + real Slurm, jobs grow and shrink the cluster",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command in ("resume", "suspend", "resume-fail"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _power_main(args.command, [args.hostlist] + (["--config", args.config] if args.config else []))
    if args.command == "lab" and args.lab_command == "cloud":
        from elastic.lab.cloud.cli import main as lab_cloud_main

        return lab_cloud_main(rest)
    if args.command == "lab" and args.lab_command == "chaos":
        from elastic.lab.chaos.cli import main as chaos_main

        return chaos_main(rest)
    if args.command == "demo":
        from elastic.lab.demo import main as demo_main

        return demo_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Admin commands registered by add_admin_commands set `handler(args) -> int`.
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())

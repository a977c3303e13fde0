"""The admin's subcommands of `elastic`: check, status, reconcile, slurm-conf.

Handlers only wire collaborators and print. Exit codes: 0 all well; 1 the command ran and found
something (a failed check, a mismatch, a repair due or failed, a difference from slurmctld); 2 it
could not run (bad config or command line, unusable clouds.yaml, wrong credentials, cloud or
slurmctld unreachable, another reconcile running): one line on stderr, nothing changed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from elastic.errors import CloudError, ElasticError, LockTimeout, SlurmError, UsageError

if TYPE_CHECKING:  # imported where used: `elastic --help` and slurm-conf should not pay for them
    from structlog.typing import FilteringBoundLogger

    from elastic.admin.reconcile import Repair, Result
    from elastic.cloud import FloatingIp, OpenStackCloud, ServerGroup
    from elastic.config import Config
    from elastic.fleet import Fleet
    from elastic.history import History, PendingDelete
    from elastic.slurm import Slurm

EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2


def add_admin_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = _command(
        subparsers, "check", check_command, help="check the YAML, the clouds and slurmctld's power-save settings",
        description="Validate the pool YAML, authenticate on every cloud and resolve each pool's flavor, image, "
                    "network and key pair, compare flavors with the pools' Slurm sizes, report quota headroom, "
                    "check the three programs and slurmctld's running power-save settings. Exit 1 when a check fails.")
    _programs_option(check, "programs to check when slurmctld is not reachable")

    status = _command(
        subparsers, "status", status_command, pool_filter=True,
        help="one row per node: Slurm state, server, cloud, address, age, mismatches",
        description="Show every node of every pool with its Slurm state and its server(s), flagging orphaned "
                    "servers, powered-up nodes without a server, and duplicate servers. Exit 1 when any is found.")
    status.add_argument("--json", action="store_true", help="print the rows as JSON")

    reconcile = _command(
        subparsers, "reconcile", reconcile_command, pool_filter=True,
        help="repair what status flags (dry run unless --apply)",
        description="Compute the repairs for the mismatches status flags: delete orphaned servers older than "
                    "reconcile.grace, delete duplicates keeping one, power down nodes whose server vanished, "
                    "delete our floating IPs that no live server of ours holds (older than reconcile.grace). "
                    "Prints them; changes nothing without --apply. Run it from the systemd timer in etc/.")
    reconcile.add_argument("--apply", action="store_true", help="carry the repairs out")

    slurm_conf = _command(
        subparsers, "slurm-conf", slurm_conf_command, help="print or write the slurm.conf include for the pools",
        description="Print the NodeName, PartitionName and power-save lines that follow from the pool YAML, or "
                    "write them to a file to include from slurm.conf. --check compares them with slurmctld. "
                    "The power-save lines are those the Slurm version needs: the running slurmctld's, else "
                    "the installed scontrol's, else 22.05 (said on stderr), unless --slurm-version names one.")
    _programs_option(slurm_conf, "where the three programs are installed")
    slurm_conf.add_argument("--suspend-time", type=int, default=600, metavar="SECONDS",
                            help="SuspendTime: idle seconds before a node is powered down (default 600)")
    slurm_conf.add_argument("--slurm-version", metavar="X.Y",
                            help="write for this Slurm version (e.g. 24.11) instead of the running slurmctld's; "
                                 "with --check, judge the running settings as this version's")
    mode = slurm_conf.add_mutually_exclusive_group()
    mode.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of printing")
    mode.add_argument("--check", action="store_true", help="say whether slurmctld runs with these settings")


def _command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             command: Callable[[argparse.Namespace], int], *, help: str, description: str,
             pool_filter: bool = False) -> argparse.ArgumentParser:
    """A subcommand with --config (and --pool), run by `command` behind the one-line error guard."""
    parser = subparsers.add_parser(name, help=help, description=description)
    if pool_filter:
        parser.add_argument("--pool", action="append", metavar="NAME", help="only this pool (repeatable)")
    parser.add_argument("--config", help="pool YAML (default: $ELASTIC_CONFIG, elastic.yaml beside $SLURM_CONF, "
                                         "/etc/slurm/elastic.yaml)")
    parser.set_defaults(handler=_guarded(command))
    return parser


def _programs_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--programs-dir", type=Path, metavar="DIR",
                        help=f"{what} (default: the console scripts beside {sys.executable})")


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(command)
    def handler(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ElasticError, OSError) as error:
            print(f"elastic: error: {_one_line(error)}", file=sys.stderr)
            return EXIT_ERROR

    return handler


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename or ''}: {error.strerror}".lstrip(": ")
    return " ".join(str(error).split())


def _why_unseen(error: CloudError, config: Config) -> str:
    """`kind: message (fix)` for a cloud that could not be listed."""
    from elastic.admin.check import cloud_fix

    hint = cloud_fix(error, config, error.cloud) if error.cloud in config.clouds else ""
    return f"{error.kind.value}: {error.message}" + (f" ({hint})" if hint else "")


def _load(args: argparse.Namespace) -> Config:
    from elastic.config import config_from_env

    return config_from_env(args.config)


def _pools(config: Config, names: list[str] | None) -> list[str] | None:
    if not names:
        return None
    unknown = [name for name in names if name not in config.pools]
    if unknown:
        raise UsageError(f"unknown pool {unknown[0]!r} (pools in {config.source}: {', '.join(config.pools)})")
    return list(dict.fromkeys(names))


def _node_names(config: Config, pools: list[str] | None) -> list[str] | None:
    if pools is None:
        return None
    return [node for pool in pools for node in config.pools[pool].node_names]


def _clouds(config: Config, clock: Callable[[], float]) -> dict[str, OpenStackCloud]:
    from elastic.wiring import make_clouds

    return make_clouds(config, clock)


def _history(config: Config) -> History:
    """The state dir's history, read by status and reconcile; a change it cannot save is said once."""
    from elastic.history import History

    return History(config.history_path, on_error=lambda message: print(f"elastic: warning: {message}", file=sys.stderr))


def _quiet_log() -> FilteringBoundLogger:
    """The log of a read-only admin command: errors only, to stderr."""
    from elastic import logs

    return logs.configure_logging(log_file=None, run_id=logs.new_run_id(), command="admin", interactive=False,
                                  level="error")


def _fleet(config: Config, history: History, clock: Callable[[], float], log: FilteringBoundLogger) -> Fleet:
    from elastic.fleet import Fleet

    return Fleet(config, _clouds(config, clock), history, log=log, clock=clock)


def _slurm(config: Config) -> Slurm:
    from elastic.wiring import make_slurm

    return make_slurm(config)


# ---- check ---------------------------------------------------------------------------------------


def check_command(args: argparse.Namespace, clock: Callable[[], float] = time.time) -> int:
    from elastic.admin import check
    from elastic.admin.slurm_conf import default_programs

    config = _load(args)
    programs = default_programs(args.programs_dir)
    slurm: Slurm | None = None
    slurm_error: str | None = None
    try:
        slurm = _slurm(config)
        if not slurm.ping():
            slurm, slurm_error = None, "scontrol ping: slurmctld does not answer"
    except SlurmError as error:
        slurm, slurm_error = None, str(error)
    checks = check.run_all(config, _clouds(config, clock), slurm, slurm_error=slurm_error, programs=programs,
                           history=_history(config), now=clock())
    sys.stdout.write(check.render(checks))
    counts = {status: sum(1 for c in checks if c.status == status)
              for status in (check.OK, check.WARN, check.FAIL, check.SKIP)}
    print(f"{len(checks)} checks: {counts[check.OK]} ok, {counts[check.WARN]} warn, {counts[check.FAIL]} failed, "
          f"{counts[check.SKIP]} skipped")
    return EXIT_FOUND if check.failed(checks) else EXIT_OK


# ---- status --------------------------------------------------------------------------------------


def status_command(args: argparse.Namespace, clock: Callable[[], float] = time.time) -> int:
    from elastic.admin import status

    config = _load(args)
    pools = _pools(config, args.pool)
    history = _history(config)
    fleet = _fleet(config, history, clock, _quiet_log())
    slurm: Slurm | None = None
    slurm_error: str | None = None
    try:
        slurm = _slurm(config)
    except SlurmError as error:
        slurm_error = str(error)
    snapshot = status.collect(config, fleet, slurm, _node_names(config, pools), pending=history.pending_deletes())
    slurm_error = slurm_error or snapshot.slurm_error
    known = snapshot.nodes is not None
    now = clock()
    table_rows = status.rows(config, snapshot.servers, snapshot.nodes, pools=pools, unseen=snapshot.unseen,
                             pending=snapshot.pending)
    unseen = {cloud: _why_unseen(error, config) for cloud, error in snapshot.unseen.items()}
    # With --pool, the pending deletes are its nodes' (collect keeps those) and the problems its pools'.
    pending = snapshot.pending
    clouds = status.cloud_lines(config, unseen, history, now, pools=pools, pending=pending)
    extra = status.Extra(jobs=_jobs_by_node(slurm) if known else None, groups=status.group_names(config, fleet))
    # Floating IPs belong to no pool: looked at on a view of every pool only (None: not looked at).
    leaked, ips_unseen = _leaked_floating_ips(config, fleet, now, pending) if pools is None else (None, {})
    ips_unseen = {cloud: error for cloud, error in ips_unseen.items() if cloud not in snapshot.unseen}
    if args.json:
        print(json.dumps({"cluster": config.cluster, "time": now, "slurm_error": slurm_error,
                          "clouds_unseen": unseen,
                          "cloud_problems": status.pool_problems(history.problems(), pools),
                          "pending_deletes": pending,
                          "leaked_floating_ips": None if leaked is None else [
                              {"cloud": ip.cloud, "id": ip.id, "address": ip.address, "node": ip.node,
                               "problem": problem} for ip, problem in leaked],
                          "floating_ips_unseen": {cloud: _why_unseen(refusal, config)
                                                  for cloud, refusal in ips_unseen.items()},
                          "rows": [row.to_json(now, known, extra) for row in table_rows]}, indent=2))
    else:
        if not known:
            print(f"elastic: warning: Slurm not asked ({slurm_error}): only duplicate servers are flagged",
                  file=sys.stderr)
        sys.stdout.write(status.render(table_rows, now, slurm_known=known, extra=extra))
        for line in clouds:
            print(line)
        for cloud, refusal in ips_unseen.items():
            print(f"elastic: warning: floating IPs on {cloud} cannot be listed: {_why_unseen(refusal, config)}; "
                  "leaks there are not shown", file=sys.stderr)
        for ip, problem in leaked or []:
            print(f"floating IP {ip.address} ({ip.id}) on {ip.cloud} of {ip.node} leaked ({problem}); "
                  "`elastic reconcile --apply` deletes it")
        print(status.summary(table_rows))
    trouble = any(row.problem for row in table_rows) or snapshot.unseen or pending or leaked or ips_unseen
    return EXIT_FOUND if trouble else EXIT_OK


def _leaked_floating_ips(config: Config, fleet: Fleet, now: float, pending: Mapping[str, Mapping[str, PendingDelete]],
                         ) -> tuple[list[tuple[FloatingIp, str]], dict[str, CloudError]]:
    """Our floating IPs that reconcile would delete now (due: past the grace period, and not on a
    server a suspend under way is deleting), with the problem; and the clouds whose floating IPs
    could not be listed. `pending`: History's pending deletes, as reconcile reads them."""
    from elastic.admin import reconcile

    repairs, unseen = reconcile.leaked_floating_ips(config, fleet, now, pending=pending)
    return [(r.ip, reconcile.ip_problem(r)) for r in repairs if r.ready], unseen


def _jobs_by_node(slurm: Slurm | None) -> dict[str, list[int]] | None:
    """The jobs holding each node, or None (no JOB column) when Slurm cannot tell."""
    if slurm is None:
        return None
    try:
        return slurm.jobs_by_node()
    except SlurmError:
        return None


# ---- reconcile -----------------------------------------------------------------------------------


def reconcile_command(args: argparse.Namespace, clock: Callable[[], float] = time.time) -> int:
    config = _load(args)
    pools = _pools(config, args.pool)
    slurm = _slurm(config)
    if not args.apply:
        return _reconcile(config, slurm, pools, apply=False, clock=clock)
    from elastic.locks import exclusive_lock

    lock_path = config.state_dir / "reconcile.lock"
    try:
        with exclusive_lock(lock_path, timeout=1):
            return _reconcile(config, slurm, pools, apply=True, clock=clock)
    except LockTimeout:
        raise LockTimeout(f"another `elastic reconcile --apply` is running (lock {lock_path})") from None


def _reconcile(config: Config, slurm: Slurm, pools: list[str] | None, *, apply: bool,
               clock: Callable[[], float]) -> int:
    from elastic import logs
    from elastic.admin import reconcile, status

    history = _history(config)
    if apply:
        from elastic.wiring import ensure_state_dir

        ensure_state_dir(config)
        log = logs.configure_logging(log_file=config.log_file, run_id=logs.new_run_id(), command="reconcile",
                                     interactive=False, level=config.log_level)
    else:
        log = _quiet_log()
    fleet = _fleet(config, history, clock, log)
    snapshot = status.collect(config, fleet, slurm, _node_names(config, pools), need_slurm=True,
                              pending=history.pending_deletes())
    now = clock()
    for cloud, error in snapshot.unseen.items():
        print(f"elastic: warning: cloud {cloud} cannot be listed: {_why_unseen(error, config)}; "
              "its servers get no repair now", file=sys.stderr)
    table_rows = status.rows(config, snapshot.servers, snapshot.nodes, pools=pools, unseen=snapshot.unseen,
                             pending=snapshot.pending)
    repairs = reconcile.plan(table_rows, now, config.reconcile.grace, pending=snapshot.pending, unseen=snapshot.unseen)
    # Empty server groups and leaked floating IPs of ours, on a pass over every pool only (--pool
    # scopes the nodes' repairs).
    groups = _empty_groups(config, fleet, slurm) if pools is None else []
    ips, ips_unseen = (reconcile.leaked_floating_ips(config, fleet, now, pending=snapshot.pending)
                       if pools is None else ([], {}))
    for cloud, error in ips_unseen.items():
        if cloud not in snapshot.unseen:
            print(f"elastic: warning: floating IPs on {cloud} cannot be listed: {_why_unseen(error, config)}; "
                  "they get no repair now", file=sys.stderr)
    blind = EXIT_FOUND if snapshot.unseen or ips_unseen else EXIT_OK
    if not repairs and not groups and not ips:
        print("nothing to repair")
        return blind
    if repairs:
        sys.stdout.write(reconcile.render_plan(repairs, now))
    if ips:
        sys.stdout.write(reconcile.render_ip_plan(ips, now))
    for cloud, group in groups:
        print(f"server group {group.name} ({group.id}) on {cloud}: no member and its job holds no node: delete")
    due = [r for r in repairs if r.ready]
    ips_due = [r for r in ips if r.ready]
    if not apply:
        waiting = len(repairs) - len(due) + len(ips) - len(ips_due)
        print(f"{len(due) + len(groups) + len(ips_due)} repairs due, {waiting} waiting; nothing changed (use --apply)")
        return EXIT_FOUND if due or groups or ips_due else blind
    failed = False
    for cloud, group, problem in reconcile.delete_groups(fleet, groups, log):
        print(f"server group {group.name} on {cloud}: {'FAILED: ' + problem if problem else 'deleted'}")
        failed = failed or problem is not None
    if ips_due:
        released = reconcile.delete_floating_ips(config, fleet, ips_due, log=log, clock=clock, history=history)
        sys.stdout.write(reconcile.render_ip_result(released))
        failed = failed or any(result == "FAILED" for _, result, _ in released)
    if not due:
        return EXIT_FOUND if failed else blind
    result = _apply(config, fleet, slurm, repairs, history, log, clock)
    print()
    sys.stdout.write(reconcile.render_result(result))
    return EXIT_FOUND if result.failed or failed else blind


def _empty_groups(config: Config, fleet: Fleet, slurm: Slurm) -> list[tuple[str, ServerGroup]]:
    """Our empty server groups to delete; none asked for when no pool uses groups, and none when
    Slurm cannot say which jobs hold nodes (a group of a running job must stay)."""
    from elastic.admin import reconcile

    if not any(pool.server_group for pool in config.pools.values()):
        return []
    try:
        jobs = slurm.jobs_by_node()
    except SlurmError as error:
        print(f"elastic: warning: server groups not checked: {error}", file=sys.stderr)
        return []
    return reconcile.empty_groups(config, fleet, jobs)


def _apply(config: Config, fleet: Fleet, slurm: Slurm, repairs: list[Repair], history: History,
           log: FilteringBoundLogger, clock: Callable[[], float]) -> Result:
    from elastic.admin import reconcile
    from elastic.locks import free_node_locks

    log.info("reconcile.start", repairs=[{"action": r.action, "node": r.node, "problem": r.problem,
                                          "server": r.server.id if r.server else None, "wait": r.wait or None}
                                         for r in repairs])
    locks = functools.partial(free_node_locks, config.lock_dir)  # a busy node waits for the next pass
    result = reconcile.apply(config, fleet, slurm, repairs, locks=locks, log=log, clock=clock, history=history)
    log.info("reconcile.done", done=len(result.done), failed=len(result.failed), skipped=len(result.skipped))
    return result


# ---- slurm-conf ----------------------------------------------------------------------------------


def slurm_conf_command(args: argparse.Namespace) -> int:
    from elastic import slurm_conf_lines
    from elastic.admin import slurm_conf
    from elastic.slurm import parse_version, version_text

    requested: tuple[int, ...] | None = None
    if args.slurm_version is not None:
        try:
            requested = parse_version(args.slurm_version)
        except UsageError as error:
            raise UsageError(f"--slurm-version: {error}") from None
    config = _load(args)
    programs = slurm_conf.default_programs(args.programs_dir)
    if args.check:
        slurm = _slurm(config)
        running, nodes = slurm.config(), slurm.node_fields()
        version = requested or slurm_conf.slurm_version(running)
        judged = (f"Slurm {version_text(version)} (--slurm-version; slurmctld runs {running.get('SLURM_VERSION')})"
                  if requested else f"Slurm {version_text(version)}")
        differences = (slurm_conf.power_save_differences(config, programs, running, suspend_time=args.suspend_time,
                                                         version=version)
                       + slurm_conf.node_differences(config, nodes, version=version))
        if not differences:
            print(f"slurmctld runs with the nodes and power-save settings of the YAML for {judged}")
            return EXIT_OK
        sys.stdout.write(slurm_conf.render_differences(differences))
        print(f"{len(differences)} differences for {judged}: include `elastic slurm-conf` output in slurm.conf "
              "(and remove what is marked remove), then restart slurmctld")
        return EXIT_FOUND
    if requested is not None:
        version, source = requested, "--slurm-version"
    else:
        version, source = _slurm_version_for(config)
    print(f"elastic: power-save lines for Slurm {version_text(version)} ({source})", file=sys.stderr)
    text = slurm_conf_lines.render(config, programs, suspend_time=args.suspend_time, version=version)
    for path in slurm_conf.missing_programs(programs):
        print(f"elastic: warning: {path} does not exist (use --programs-dir)", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    with contextlib.suppress(FileNotFoundError):
        if args.output.read_text() == text:
            print(f"{args.output} is up to date", file=sys.stderr)
            return EXIT_OK
    slurm_conf.write_atomically(args.output, text)
    print(f"wrote {args.output}; restart slurmctld for node changes (scontrol reconfigure for the rest)",
          file=sys.stderr)
    return EXIT_OK


def _slurm_version_for(config: Config) -> tuple[tuple[int, ...], str]:
    """The version to write slurm.conf lines for, and where it came from: the running slurmctld's;
    when it does not answer, the installed scontrol's (`scontrol --version`); else 22.05, assumed.
    A version slurmctld shows that is not one is an error (exit 2), not a guess."""
    from elastic import slurm_conf_lines
    from elastic.admin import slurm_conf

    assume = "assumed: use --slurm-version to name yours"
    try:
        slurm = _slurm(config)
    except SlurmError as error:
        return slurm_conf_lines.DEFAULT_VERSION, f"{assume}; {_one_line(error)}"
    try:
        running = slurm.config()
    except SlurmError as error:
        try:
            return slurm.client_version(), f"the installed scontrol's; slurmctld did not answer: {_one_line(error)}"
        except SlurmError:
            return slurm_conf_lines.DEFAULT_VERSION, f"{assume}; slurmctld did not answer: {_one_line(error)}"
    return slurm_conf.slurm_version(running), "the running slurmctld's"

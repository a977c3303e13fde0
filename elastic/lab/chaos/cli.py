"""`elastic lab chaos`: the command line of the soak. Exit 0: no violation; 1: violations (the
report names the seed and the history of the nodes that broke); 2: it could not run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from elastic.lab.chaos.runner import OPERATIONS, Options, run_soak
from elastic.lab.chaos.storms import FAULTS


def parse(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="elastic lab chaos",
        description="Run the real resume/suspend/resume-fail programs against the OpenStack emulator with random "
                    "overlapping calls, SIGKILLs, cloud faults and a reconcile timer, against a model of "
                    "slurmctld's power-save state machine; then check the invariants at quiescence.")
    parser.add_argument("--seed", type=int, required=True, help="fixes every random choice")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--ops", type=int, metavar="N", help="run this many program calls")
    budget.add_argument("--seconds", type=float, metavar="T", help="run this long")
    parser.add_argument("--clouds", type=int, choices=(2, 3), default=2)
    parser.add_argument("--parallel", type=int, default=4, metavar="P", help="programs at once, at most (default 4)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma list of faults to switch on and off, or none (default: all: {','.join(FAULTS)})")
    parser.add_argument("--operations", default=",".join(OPERATIONS),
                        help=f"comma list of the operations to do (default: all: {','.join(OPERATIONS)})")
    parser.add_argument("--no-kills", action="store_true", help="no random SIGKILLs (timeout kills stay)")
    parser.add_argument("--reconcile-every", type=float, default=10.0, metavar="S")
    parser.add_argument("--workdir", type=Path, help="keep the site (config, logs, model, history) here")
    parser.add_argument("--progress", type=float, default=60.0, metavar="S",
                        help="a progress line on stderr every S seconds (default 60; 0: none)")
    args = parser.parse_args(argv)
    faults = () if args.faults in ("", "none") else tuple(f.strip() for f in args.faults.split(","))
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    operations = tuple(o.strip() for o in args.operations.split(",") if o.strip())
    if not operations or any(o not in OPERATIONS for o in operations):
        parser.error(f"--operations: a comma list of {', '.join(OPERATIONS)}")
    if (args.ops is not None and args.ops < 1) or (args.seconds is not None and args.seconds <= 0) or args.parallel < 1:
        parser.error("--ops, --seconds and --parallel must be positive")
    if args.progress < 0:
        parser.error("--progress must be 0 or positive")
    return Options(seed=args.seed, ops=args.ops, seconds=args.seconds, clouds=args.clouds, parallel=args.parallel,
                   faults=faults, kills=not args.no_kills, reconcile_every=args.reconcile_every,
                   operations=operations, workdir=args.workdir, progress=args.progress)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(list(sys.argv[1:] if argv is None else argv))
    report = run_soak(options, lambda line: print(line, file=sys.stderr, flush=True))
    for line in report.lines:
        print(line, flush=True)
    return 0 if report.ok else 1

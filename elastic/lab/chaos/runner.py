"""The soak: slurmctld's part (the model's power-save passes and the programs they start), random
operations and kills, cloud faults and the reconcile timer, then quiescence and the check.

The seed fixes every random choice (nodes, operations, faults, kills); the timing of real
processes does not repeat exactly, so a replay with the same seed walks the same kind of path.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elastic.config import META_CLUSTER, META_NODE
from elastic.hostlists import compress
from elastic.lab.chaos.check import Violation, check
from elastic.lab.chaos.launcher import Launcher, Run
from elastic.lab.chaos.model import DOWN, IDLE, Node, ScontrolError, SlurmModel
from elastic.lab.chaos.site import CAMPUS, CLUSTER, SITE, THIRD, Settings, Site, lab_config, make_site
from elastic.lab.chaos.storms import FAULTS, NORMAL_DELETE_SECONDS, Storms
from elastic.lab.cloud import LabCloud

OPERATIONS = {"resume": 5.0, "suspend": 4.0, "resume-fail": 1.0, "admin-resume": 0.7, "force-down": 0.6,
              "kill": 1.2}


@dataclass(frozen=True)
class Options:
    seed: int
    ops: int | None = None
    seconds: float | None = None
    clouds: int = 2
    parallel: int = 4  # programs at once, at most
    faults: tuple[str, ...] = FAULTS
    kills: bool = True
    reconcile_every: float = 10.0
    operations: tuple[str, ...] = tuple(OPERATIONS)  # which of OPERATIONS the soak does
    workdir: Path | None = None
    settings: Settings = Settings()
    progress: float = 0.0  # seconds between progress lines to `out` (0: none)


@dataclass
class Report:
    seed: int
    violations: list[Violation]
    lines: list[str]
    counts: Counter[str]
    seconds: float
    workdir: Path

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class _Cloudview:
    """One look at every cloud: our servers per node."""

    servers: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, lab: LabCloud) -> _Cloudview:
        view = cls()
        for cloud in lab.clouds:
            for server in lab.servers(cloud):
                if server["metadata"].get(META_CLUSTER) == CLUSTER and server["metadata"].get(META_NODE):
                    view.servers[server["metadata"][META_NODE]].append(server)
        return view

    def booted(self, node: str, since: float) -> bool:
        return any(s["status"] == "ACTIVE" and s["task_state"] is None and s["created"] >= since
                   for s in self.servers.get(node, []))

    def alive(self, node: str) -> bool:
        return any(s["status"] == "ACTIVE" and s["task_state"] != "deleting" for s in self.servers.get(node, []))

    def deleting(self) -> int:
        return sum(1 for servers in self.servers.values() for s in servers if s["task_state"] == "deleting")


# Reconcile passes at quiescence, as the timer would run them: the second finds what the first left
# (a stranded node with a server gets the delete and `state=resume` in one pass once the delete is
# accepted; two passes were needed before, and stay harmless).
FINAL_RECONCILES = 2


class Soak:
    def __init__(self, options: Options, root: Path, out: Callable[[str], None]):
        self.options = options
        self.rng = random.Random(options.seed)
        self.out = out
        names = [SITE, CAMPUS, THIRD][: options.clouds]
        self.lab = LabCloud(lab_config(names))
        self.root = root
        self.counts: Counter[str] = Counter()
        self.events: dict[str, list[tuple[float, str]]] = defaultdict(list)  # node -> (time, text)
        self.global_events: list[tuple[float, str]] = []
        self.reasons: dict[str, set[str]] = defaultdict(set)
        self.storms = Storms(self.lab, names, self.rng, options.faults, on_event=self._global)
        self.reconcile: subprocess.Popen[bytes] | None = None
        self.forced_timeouts: set[str] = set()  # nodes whose ResumeTimeout the soak brought early
        self.silent: list[Violation] = []
        self.unrecorded: set[str] = set()  # nodes of a release killed before its intent was written
        self.next_reconcile = 0.0
        self.site: Site
        self.launcher: Launcher

    def _global(self, text: str) -> None:
        self.global_events.append((time.time(), text))

    # ---- one step ------------------------------------------------------------------------------

    def tick(self, *, calm: bool = False) -> None:
        now = time.time()
        for run in self.launcher.reap():
            self._noted(run, run.describe())
        limit = max(self.site.settings.timing.resume_timeout, self.site.settings.timing.suspend_timeout)
        for run in list(self.launcher.running):
            if now - run.started > limit and not run.killed:
                self.launcher.timeout_kill(run)
                self._killed(run)
                self.counts["timeout kills"] += 1
                self._noted(run, f"{run.program} pid {run.pid}: killed at the {limit:.0f}s program timeout")
        view = _Cloudview.of(self.lab)
        with self.site.store.change() as model:
            calls = model.power_save_pass(now, view.booted, view.alive)
            for node in model.nodes.values():
                if node.reason:
                    self.reasons[node.name].add(node.reason)
        self._silent_timeouts(calls.resume_fail, view)
        for program, nodes in (("resume", calls.resume), ("suspend", calls.suspend),
                               ("resume-fail", calls.resume_fail)):
            if nodes:
                run = self.launcher.start(program, nodes)
                self.counts["operations"] += 1
                self.counts[program] += 1
                self._noted(run, f"{program} {compress(nodes)} pid {run.pid}: started")
        if not calm:
            self.storms.step(now)
            self._reconcile_timer(now)

    def _killed(self, run: Run) -> None:
        """A suspend or resume-fail killed before it wrote its deletes as pending (still starting
        Python, or waiting for a node's lock) leaves no trace of its servers: no program can help
        that, so a resume adopting such a server (and the ResumeTimeout that follows) is excused
        once for its nodes. The history says whether the intent was written."""
        if run.program not in ("suspend", "resume-fail"):
            return
        try:
            run.process.wait(timeout=5)
            released = json.loads((self.site.state_dir / "history.json").read_text()).get("released") or {}
        except (OSError, ValueError, subprocess.TimeoutExpired):
            released = {}
        for node in run.nodes:
            # The release time and the pending deletes are written together: a release time from
            # this run's start on says the intent was written (another run's stale entry would not).
            if released.get(node, 0.0) < run.started - 0.5:
                self.unrecorded.add(node)

    def _silent_timeouts(self, timed_out: list[str], view: _Cloudview) -> None:
        """Invariant 3: a node a resume could not serve gets a state that says why, never silently
        POWERING_UP until ResumeTimeout. A ResumeTimeout the soak did not bring early, for a node
        whose last resume ended on its own (not killed) and none runs, is such a silence."""
        for node in timed_out:
            if node in self.forced_timeouts:
                self.forced_timeouts.discard(node)
                continue
            runs = [run for run in [*self.launcher.done, *self.launcher.running]
                    if run.program == "resume" and node in run.nodes]
            if not runs or any(run in self.launcher.running for run in runs) or runs[-1].killed:
                continue
            if node in self.unrecorded:
                self.unrecorded.discard(node)
                self.counts["excused timeouts"] += 1
                continue
            servers = ", ".join(f"{s['id'][:8]} {s['status']} created {s['created']:.1f}"
                                for s in view.servers.get(node, [])) or "none"
            self.silent.append(Violation("silent-powering-up", f"{node} reached ResumeTimeout after "
                                         f"{runs[-1].describe()} (servers: {servers})", node))

    def _noted(self, run: Run, text: str) -> None:
        for node in run.nodes:
            self.events[node].append((time.time(), text))

    def _reconcile_timer(self, now: float) -> None:
        if self.reconcile is not None and self.reconcile.poll() is not None:
            self.counts[f"reconcile exit {self.reconcile.returncode}"] += 1
            self.reconcile = None
        if self.reconcile is None and now >= self.next_reconcile:
            self.reconcile = self._start_reconcile()
            self.next_reconcile = now + self.options.reconcile_every

    def _start_reconcile(self) -> subprocess.Popen[bytes]:
        self.counts["reconciles"] += 1
        self._global("reconcile --apply started")
        with open(self.root / "reconcile.out", "ab") as output:
            return subprocess.Popen([str(Path(sys.executable).parent / "elastic"), "reconcile", "--apply",
                                     "--config", str(self.site.config)],
                                    env={"SLURM_CONF": str(self.site.slurm_conf)}, cwd="/", stdin=subprocess.DEVNULL,
                                    stdout=output, stderr=output)

    # ---- random operations ---------------------------------------------------------------------

    def operate(self) -> None:
        names = [name for name in OPERATIONS if name in self.options.operations]
        operation = self.rng.choices(names, weights=[OPERATIONS[n] for n in names])[0]
        if operation == "kill":
            if self.options.kills and self.launcher.running:
                run = self.rng.choice(self.launcher.running)
                self.launcher.kill(run)
                self._killed(run)
                self.counts["kills"] += 1
                self._noted(run, f"{run.program} pid {run.pid}: SIGKILL")
            return
        now = time.time()
        with self.site.store.change() as model:
            nodes = list(model.nodes.values())
            chosen, state, fields = self._choose(operation, nodes, now)
            if operation == "resume-fail":
                for node in chosen:
                    model.expire(node.name, now)
                    self.forced_timeouts.add(node.name)
            if chosen:
                names_chosen = [n.name for n in chosen]
                if state:
                    try:
                        model.update([f"nodename={compress(names_chosen)}", f"state={state}", *fields], now,
                                     who="chaos")
                    except ScontrolError as error:
                        self._global(f"chaos: {operation} {compress(names_chosen)}: {error}")
                self.counts[f"op {operation}"] += 1
                for name in names_chosen:
                    self.events[name].append((now, f"chaos: {operation}"))

    def _choose(self, operation: str, nodes: list[Node], now: float) -> tuple[list[Node], str, list[str]]:
        rng = self.rng
        if operation == "resume":
            idle = [n for n in nodes if n.base == IDLE and n.flags == {"CLOUD", "POWERED_DOWN"}]
            again = [n for n in nodes if "POWERING_UP" in n.flags] if rng.random() < 0.2 else []
            chosen = rng.sample(idle, min(len(idle), rng.choice([1, 1, 2, 3, 5])))
            chosen += rng.sample(again, min(len(again), 2))
            return chosen, "power_up", []
        if operation == "suspend":  # SuspendTime reached on idle nodes
            up = [n for n in nodes if n.powered_up and n.base == IDLE]
            return rng.sample(up, min(len(up), rng.choice([1, 2, 4]))), "power_down", []
        if operation == "force-down":  # the job was cancelled while its nodes boot
            booting = [n for n in nodes if "POWERING_UP" in n.flags]
            return rng.sample(booting, min(len(booting), 2)), "power_down_force", []
        if operation == "resume-fail":  # ResumeTimeout comes early for these
            booting = [n for n in nodes if "POWERING_UP" in n.flags]
            chosen = rng.sample(booting, min(len(booting), rng.choice([1, 2])))
            return chosen, "", []
        if operation == "admin-resume":  # an admin returns nodes elastic left DOWN to service
            down = [n for n in nodes if n.base == DOWN and "POWERED_DOWN" in n.flags
                    and n.reason.startswith("elastic:")]
            return rng.sample(down, min(len(down), 2)), "resume", []
        raise AssertionError(operation)

    # ---- the whole run -------------------------------------------------------------------------

    def budget_left(self, started: float) -> bool:
        if self.options.ops is not None and self.counts["operations"] >= self.options.ops:
            return False
        return self.options.seconds is None or time.time() - started < self.options.seconds

    def run(self) -> Report:
        started = time.time()
        with self.lab:
            clouds_yaml = self.lab.write_clouds_yaml(self.root / "clouds.yaml")
            self.site = make_site(self.root, list(self.lab.clouds), clouds_yaml, self.options.settings)
            self.launcher = Launcher(self.site.slurm_conf)
            try:
                next_progress = started + self.options.progress
                while self.budget_left(started):
                    self.tick()
                    if len(self.launcher.running) < self.options.parallel:
                        self.operate()
                    time.sleep(self.rng.uniform(0.05, 0.3))
                    if self.options.progress and time.time() >= next_progress:
                        self.out(self.progress_line(time.time() - started))
                        next_progress += self.options.progress
                self.quiesce()
                model = self.site.store.read()
                violations = check(self.lab, model, CLUSTER, self.site.state_dir / "history.json",
                                   reasons_seen=self.reasons, log_path=self.site.log_file) + self.silent
                lines = self.summary(model, violations, time.time() - started)
            finally:
                self.launcher.wait_all(timeout=0)
                if self.reconcile is not None and self.reconcile.poll() is None:
                    self.reconcile.kill()
                    self.reconcile.wait()
        return Report(self.options.seed, violations, lines, self.counts, time.time() - started, self.root)

    def quiesce(self) -> None:
        """Faults off, every program done, no node in a transition; then one reconcile past the
        grace period, and the same again for what it started, as the reconcile timer would do it (a
        stranded node, down~ at ResumeTimeout with its ResumeFailProgram killed, that still has a
        server gets the delete and `state=resume` in one pass once the delete is accepted)."""
        self.storms.calm()
        self._global("quiescence: faults off, no new operations")
        self.settle()
        if self.reconcile is not None:
            self.reconcile.wait()
            self.counts[f"reconcile exit {self.reconcile.returncode}"] += 1
            self.reconcile = None
            self.settle()
        last_end = max((run.ended or 0.0 for run in self.launcher.done), default=0.0)
        time.sleep(max(0.0, last_end + self.site.settings.grace + 1 - time.time()))
        for _ in range(FINAL_RECONCILES):
            self.reconcile = self._start_reconcile()
            self.reconcile.wait()
            self.counts[f"reconcile exit {self.reconcile.returncode}"] += 1
            self.reconcile = None
            self.settle()
            self.deletes_done()

    def deletes_done(self) -> None:
        """The deletes the last reconcile sent are accepted, not done: a server being deleted still
        shows ACTIVE until its cloud removes it. Wait for them, as an admin would look later."""
        deadline = time.time() + NORMAL_DELETE_SECONDS + 30
        while _Cloudview.of(self.lab).deleting() and time.time() < deadline:
            time.sleep(0.1)

    def settle(self) -> None:
        timing = self.site.settings.timing
        deadline = time.time() + timing.resume_timeout + timing.suspend_timeout + 120
        while time.time() < deadline:
            self.tick(calm=True)
            model = self.site.store.read()
            if not self.launcher.running and not any(n.in_transition for n in model.nodes.values()):
                return
            time.sleep(0.2)
        self._global("settle: gave up waiting")

    # ---- the report ----------------------------------------------------------------------------

    def progress_line(self, seconds: float) -> str:
        c = self.counts
        budget = f"/{self.options.ops}" if self.options.ops is not None else ""
        rate = c["operations"] / max(seconds, 1.0)
        return (f"chaos: {c['operations']}{budget} calls in {seconds:.0f}s ({rate:.2f}/s), "
                f"{len(self.launcher.running)} running, {c['kills']} kills + {c['timeout kills']} timeout kills, "
                f"{self.storms.switched} faults switched on, {c['reconciles']} reconciles")

    def summary(self, model: SlurmModel, violations: list[Violation], seconds: float) -> list[str]:
        c = self.counts
        requests = self.lab.requests()
        statuses = Counter((r["status"] or 0) // 100 for r in requests)
        creates = sum(1 for r in requests if r["method"] == "POST" and r["path"].split("?")[0].rstrip("/")
                      .endswith("/servers"))
        deletes = sum(1 for r in requests if r["method"] == "DELETE" and "/servers/" in r["path"])
        states = Counter(n.short for n in model.nodes.values())
        exits = Counter(run.killed or f"exit {run.returncode}" for run in self.launcher.done)
        up = sum(1 for n in model.nodes.values() if n.powered_up)
        reconciled = ", ".join(f"{count} {key.removeprefix('reconcile ')}" for key, count in sorted(c.items())
                               if key.startswith("reconcile exit ")) or "none ended"
        lines = [
            f"chaos: seed {self.options.seed}, {len(self.lab.clouds)} clouds, {len(model.nodes)} nodes, "
            f"{c['operations']} operations in {seconds:.0f}s (resume {c['resume']}, suspend {c['suspend']}, "
            f"resume-fail {c['resume-fail']}), {c['reconciles']} reconciles ({reconciled}), {c['kills']} kills "
            f"+ {c['timeout kills']} timeout kills, {self.storms.switched} faults switched on",
            f"cloud requests: {len(requests)} (creates {creates}, deletes {deletes}), 4xx {statuses[4]}, "
            f"5xx {statuses[5]}, unanswered {statuses[0]}",
            f"programs: {', '.join(f'{count} {how}' for how, count in sorted(exits.items()))}; "
            f"{c['excused timeouts']} ResumeTimeouts excused (a release killed before it wrote its deletes)",
            f"nodes: {', '.join(f'{count} {state}' for state, count in sorted(states.items()))}; powered up {up}",
        ]
        by_rule = Counter(v.rule for v in violations)
        lines.append("checks: " + ", ".join(f"{rule} {by_rule[rule]}" for rule in (
            "duplicate", "orphan", "missing", "leaked-server", "unmarked-server", "leaked-floating-ip",
            "unmarked-floating-ip", "leaked-server-group", "transition", "down-without-reason", "silent-powering-up",
            "crash", "history")))
        if not violations:
            lines.append(f"verdict: OK: 0 violations (seed {self.options.seed})")
            return lines
        lines.append(f"verdict: FAIL: {len(violations)} violations (seed {self.options.seed}; replay: "
                     f"elastic lab chaos --seed {self.options.seed} {self._budget_args()} "
                     f"--clouds {self.options.clouds})")
        lines.extend(f"  {v}" for v in violations)
        for node in list(dict.fromkeys(v.node for v in violations if v.node))[:3]:
            lines.append(f"history of {node}:")
            lines.extend(self.node_history(node))
        return lines

    def _budget_args(self) -> str:
        return f"--ops {self.options.ops}" if self.options.ops is not None else f"--seconds {self.options.seconds:g}"

    def node_history(self, node: str) -> list[str]:
        entries = list(self.events.get(node, []))
        entries += [(t, f"slurm: {text}") for t, text in self.site.store.journal(node)]
        entries += [(t, f"world: {text}") for t, text in self.global_events]
        entries.sort(key=lambda entry: entry[0])
        start = entries[0][0] if entries else 0.0
        return [f"  {t - start:8.2f}s  {text}" for t, text in entries[-120:]]


def run_soak(options: Options, out: Callable[[str], None] = print) -> Report:
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        return Soak(options, options.workdir, out).run()
    with tempfile.TemporaryDirectory(prefix="elastic-chaos-") as directory:
        return Soak(options, Path(directory), out).run()

"""LocalSlurm: munged, slurmctld and one slurmd per node, all Debian's, on one machine."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from elastic.lab.slurm import procs
from elastic.lab.slurm.cluster_conf import (
    DEFAULT_POWER_SAVE,
    Layout,
    NodeSpec,
    Ports,
    Programs,
    expand_node_lines,
    render_cgroup_conf,
    render_conf,
    render_prolog,
)
from elastic.lab.slurm.install import REPO_ROOT, SlurmInstall, default_install

MUNGED = "/usr/sbin/munged"
SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
RUNUSER = "/usr/sbin/runuser"
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0
POLL = 0.1


class LocalSlurmError(RuntimeError):
    """A daemon did not start, a command failed, or a wait ran out; the message has log tails."""


class LocalSlurm:
    def __init__(self, workdir: Path, *, node_lines: list[str], partition_lines: list[str],
                 resume_program: str | None = None, suspend_program: str | None = None,
                 resume_fail_program: str | None = None, power_save: Mapping[str, str | int] | None = None,
                 extra_conf: Iterable[str] = (), elastic_yaml: str | None = None,
                 slurm_user: str = "root", cloud_reg_addrs: bool = False, prompt_launch: bool = True,
                 slurm: SlurmInstall | None = None):
        # Which Slurm: this machine's, or a Debian root's (default: $ELASTIC_SLURM, else the host's).
        self.install = slurm if slurm is not None else default_install()
        self.layout = Layout(Path(workdir).resolve())
        self.node_lines = list(node_lines)
        self.partition_lines = list(partition_lines)
        self.programs = Programs(resume_program, suspend_program, resume_fail_program)
        self.power_save = dict(power_save or {})
        self.extra_conf = list(extra_conf)
        self.elastic_yaml = elastic_yaml
        self.slurm_user = slurm_user
        self.cloud_reg_addrs = cloud_reg_addrs
        self.prompt_launch = prompt_launch
        self.ports = Ports()
        self.nodes: dict[str, NodeSpec] = {}
        self.munged: procs.Daemon | None = None
        self.slurmctld: procs.Daemon | None = None
        self.slurmds: dict[str, procs.Daemon] = {}
        self._spawned: list[procs.Daemon] = []
        self._stopped = False
        self._lock = threading.RLock()  # start_slurmd/stop_slurmd come from other threads (lab hooks)
        _check_programs(self.programs)

    # -- paths and environment -------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        return self.layout.workdir

    @property
    def conf_path(self) -> Path:
        return self.layout.conf

    @property
    def env(self) -> dict[str, str]:
        """Our environment for Slurm commands against this cluster: SLURM_CONF set, and no SLURM_*
        variable inherited from an outer Slurm job (sbatch would take SLURM_JOB_ID and friends)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf_path)
        if self.install.root is not None:
            # What the root's `enter` binds at /src: this checkout, which its venv runs editable.
            env["ELASTIC_LAB_SRC"] = str(REPO_ROOT)
        return env

    def node_port(self, name: str) -> int:
        return self.ports.nodes[name]

    @property
    def version(self) -> tuple[int, int, int]:
        """The Slurm release the daemons run, e.g. (24, 11, 5)."""
        return self.install.version

    def inside(self, path: Path | str) -> str:
        """`path` as the daemons and the programs they start see it (the same path on the host)."""
        return self.install.inside(path)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalSlurm:
        if not self.install.contains(self.workdir):
            raise LocalSlurmError(f"{self.workdir}: the daemons of {self.install.describe()} only see files "
                                  f"below it: put the work directory in {self.install.tmpdir()}")
        short = tempfile.mkdtemp(prefix="elastic-slurmd-", dir=self.install.tmpdir())
        self.layout = dataclasses.replace(self.layout, short=Path(short))
        try:
            self._write_files()
            self._start_munged()
            self._start_slurmctld()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Every daemon down, by its pid: slurmds first, then slurmctld, then munged."""
        with self._lock:
            self._stopped = True
            for name in list(self.slurmds):
                self.stop_slurmd(name)
            for attr in ("slurmctld", "munged"):
                daemon = getattr(self, attr)
                if daemon is not None:
                    procs.stop(daemon)
            if self.layout.short is not None:
                shutil.rmtree(self.layout.short, ignore_errors=True)

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def running_pids(self) -> list[int]:
        """Pids of the daemons started here that are still alive (empty after stop())."""
        return [d.pid for d in self._spawned if procs.pid_alive(d.pid)]

    def started_pids(self) -> list[int]:
        """Pids of every daemon started here, alive or not (for asserting they are gone)."""
        return [d.pid for d in self._spawned]

    def reconfigure(self, *, node_lines: list[str] | None = None, partition_lines: list[str] | None = None) -> None:
        """Rewrite slurm.conf with new node/partition lines and make slurmctld take it.

        22.05 refuses `scontrol reconfigure` when the set of nodes changed ("You have to restart
        slurmctld"), so then slurmctld is restarted on the same state; running slurmds stay up,
        but those of removed nodes are stopped.
        """
        with self._lock:
            before = set(self.nodes)
            if node_lines is not None:
                self.node_lines = list(node_lines)
            if partition_lines is not None:
                self.partition_lines = list(partition_lines)
            self._write_conf()
            for name in before - set(self.nodes):
                self.stop_slurmd(name)
            if set(self.nodes) == before:
                self.run("scontrol", "reconfigure")
                return
            assert self.slurmctld is not None
            procs.stop(self.slurmctld)
            self._start_slurmctld()
            # A restarted slurmctld knows running slurmds only once they register again; it asks
            # them to after some seconds, a reconfigure makes them do it at once.
            self.run("scontrol", "reconfigure")
            for name in [n for n in self.slurmds if self.slurmd_running(n)]:
                self.wait_node_state(name, lambda st: not st.startswith("UNKNOWN"), START_TIMEOUT)

    # -- nodes -----------------------------------------------------------------------------

    def start_slurmd(self, name: str) -> None:
        """Start `name`'s slurmd, as a booted VM would; nothing if it runs already.

        `-b` makes slurmd report "booted now". Its boot time as slurmctld computes it (now minus
        whole seconds of uptime) can be up to ~2 s before the real start, and slurmctld ignores
        the registration of a POWERING_UP node that booted before the resume request ("Still
        waiting for boot"), which is at most now. So for such a node, start 2 whole seconds
        after the current second.
        """
        if name not in self.nodes:
            raise KeyError(f"no node {name!r} in slurm.conf")
        if self.slurmd_running(name) or self._stopped:
            return
        if "POWERING_UP" in self.node_state(name):
            _sleep_until(math.floor(time.time()) + 2)  # outside the lock: nodes boot in parallel
        with self._lock:
            # After stop() a late "boot" (a lab hook thread) must not leave a slurmd behind.
            if self.slurmd_running(name) or self._stopped:
                return
            (self.layout.spool / name).mkdir(parents=True, exist_ok=True)
            argv = [SLURMD, "-D", "-b", "-N", name, "-f", str(self.conf_path)]
            self.slurmds[name] = self._spawn(f"slurmd-{name}", argv)

    def stop_slurmd(self, name: str) -> None:
        """Stop `name`'s slurmd and its jobs' processes, as deleting the VM would; nothing if down.

        slurmd starts each slurmstepd through a child that calls setsid() and exits, so steps are
        neither slurmd's descendants nor in its process group, and they outlive slurmd by design.
        They are found by the one thing they share with their node's slurmd: its log file, which
        they keep open. Each step's session holds the job's tasks too.
        """
        with self._lock:
            daemon = self.slurmds.pop(name, None)
            if daemon is None:
                return
            steps = procs.holders(self.layout.log / f"slurmd-{name}.log") - {daemon.pid}
            procs.kill_all(procs.session_members(steps))
            procs.stop(daemon)

    def slurmd_running(self, name: str) -> bool:
        daemon = self.slurmds.get(name)
        return daemon is not None and daemon.alive()

    def node_state(self, name: str) -> str:
        """slurmctld's state of a node, flags joined by "+", e.g. IDLE+CLOUD+POWERED_DOWN."""
        return self.node_fields(name).get("State", "")

    def node_fields(self, name: str) -> dict[str, str]:
        return _fields(self.run("scontrol", "-o", "show", "node", name))

    def job_fields(self, job_id: int | str) -> dict[str, str]:
        return _fields(self.run("scontrol", "-o", "show", "job", str(job_id)))

    def wait_node_state(self, name: str, predicate: Callable[[str], bool], timeout: float) -> str:
        """Poll the node's state until `predicate(state)`; return that state."""
        return self._wait(lambda: self.node_state(name), predicate, timeout, f"node {name}")

    def wait_job(self, job_id: int | str, states: Iterable[str], timeout: float) -> str:
        """Poll until the job's JobState is one of `states` (e.g. {"COMPLETED"}); return it."""
        wanted = set(states)
        return self._wait(lambda: self.job_fields(job_id).get("JobState", ""), wanted.__contains__, timeout,
                          f"job {job_id} to be {'/'.join(sorted(wanted))}")

    # -- commands --------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a Slurm command (scontrol, sbatch, sinfo, ...) against this cluster; its stdout."""
        done = subprocess.run(self.install.command(list(argv), cwd=self.workdir), env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise LocalSlurmError(f"{' '.join(argv)}: exit {done.returncode}: "
                                  f"{(done.stderr or done.stdout).strip()}")
        return done.stdout

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of every log, for failure messages."""
        out = []
        for log in sorted(self.layout.log.glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> procs.Daemon:
        # cwd: slurmctld's is where its power-save programs start (they inherit it).
        daemon = procs.spawn(name, self.install.command(argv, cwd=self.workdir), self.layout.log / f"{name}.out",
                             self.env, cwd=self.workdir)
        self._spawned.append(daemon)
        return daemon

    def _write_files(self) -> None:
        layout = self.layout
        for directory in (layout.etc, layout.state, layout.spool, layout.run, layout.log):
            directory.mkdir(parents=True, exist_ok=True)
        self._prepare_munge()
        if self.prompt_launch:
            layout.prolog.write_text(render_prolog(layout, _resume_timeout(self.power_save)))
            layout.prolog.chmod(0o755)
        if self.elastic_yaml is not None:
            (layout.etc / "elastic.yaml").write_text(self.elastic_yaml)
        cgroup_conf = render_cgroup_conf(self.version)
        if cgroup_conf is not None:
            layout.cgroup_conf.write_text(cgroup_conf)
        self._give_to_slurm_user()
        self._write_conf()
        self._check_slurm_user_reach()

    def _write_conf(self) -> None:
        names = [spec.name for spec in expand_node_lines(self.node_lines)]
        self.ports.assign(names)
        specs = expand_node_lines(self.node_lines, self.ports.nodes)
        self.nodes = {spec.name: spec for spec in specs}
        text = render_conf(self.layout, self.ports, specs, self.partition_lines, programs=self.programs,
                           power_save=self.power_save, slurm_user=self.slurm_user,
                           cloud_reg_addrs=self.cloud_reg_addrs, prompt_launch=self.prompt_launch,
                           extra_conf=self.extra_conf, version=self.version, inside=self.inside)
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(self.conf_path)

    def _prepare_munge(self) -> None:
        # munged insists on a key only its user can read, and a socket directory that every user
        # can enter (0755): slurmctld, slurmd and every command connect to the socket.
        munge = self.layout.munge
        munge.mkdir(parents=True, exist_ok=True)
        munge.chmod(0o755)
        key = munge / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

    def _start_munged(self) -> None:
        munge = self.layout.munge
        argv = [MUNGED, "--foreground",
                # --force: munged refuses a socket below a directory that is not world-searchable,
                # and pytest's tmp_path is below /tmp/pytest-of-root (0700); root can reach it.
                "--force",
                # (Paths as munged sees them: a socket's must stay under 108 bytes.)
                f"--socket={self.inside(self.layout.munge_socket)}", f"--key-file={self.inside(munge / 'munge.key')}",
                # In the foreground munged logs to stderr (our munged.out), not to --log-file.
                f"--pid-file={self.inside(munge / 'munged.pid')}", f"--seed-file={self.inside(munge / 'munged.seed')}"]
        self.munged = self._spawn("munged", argv)
        self._wait(lambda: self.layout.munge_socket.is_socket() or not self.munged.alive(), bool,
                   START_TIMEOUT, "munged's socket")
        self._check_alive(self.munged)

    def _start_slurmctld(self) -> None:
        # -i: start even if the state files are unreadable (they are ours, and disposable).
        argv = [SLURMCTLD, "-D", "-i", "-f", str(self.conf_path)]
        self.slurmctld = self._spawn("slurmctld", argv)
        self._wait(lambda: not self.slurmctld.alive() or "is UP" in self.run("scontrol", "ping", check=False),
                   bool, START_TIMEOUT, "slurmctld to answer ping")
        self._check_alive(self.slurmctld)

    def _give_to_slurm_user(self) -> None:
        """With a SlurmUser other than root, slurmctld must own its state and write its logs."""
        if self.slurm_user == "root":
            return
        uid, gid = self.install.user_ids(self.slurm_user)
        for path in (self.layout.state, self.layout.log, self.layout.run):
            os.chown(path, uid, gid)

    def _check_slurm_user_reach(self) -> None:
        """Fail early, and clearly, where slurmctld as SlurmUser would fail late and quietly.

        slurmctld reads slurm.conf as root, then runs as SlurmUser: it must still reach the conf
        and the munge socket (so every directory above the workdir must be searchable: pytest's
        tmp_path, below a 0700 /tmp/pytest-of-root, is not), and execute each program and the
        interpreter on its #! line. A program it cannot execute makes slurmctld log "not
        executable" and disable power saving, leaving jobs CONFIGURING on POWERED_DOWN nodes.
        """
        if self.slurm_user == "root":
            return
        checks = [("-r", self.conf_path, "slurm.conf (every directory above it must be searchable)")]
        for program in filter(None, (self.programs.resume, self.programs.suspend, self.programs.resume_fail)):
            checks.append(("-x", Path(program), "program"))
            interpreter = _interpreter(Path(program))
            if interpreter:
                checks.append(("-x", Path(interpreter), f"interpreter of {program}"))
        for flag, path, what in checks:
            argv = [RUNUSER, "-u", self.slurm_user, "--", "/usr/bin/test", flag, str(path)]
            if subprocess.run(self.install.command(argv), stdin=subprocess.DEVNULL).returncode:
                raise LocalSlurmError(f"SlurmUser {self.slurm_user} cannot {'read' if flag == '-r' else 'execute'} "
                                      f"{what} {path}")

    def _check_alive(self, daemon: procs.Daemon) -> None:
        if not daemon.alive():
            raise LocalSlurmError(f"{daemon.name} exited with {daemon.popen.returncode}\n{self.log_tail()}")

    def _wait(self, probe: Callable[[], object], predicate: Callable[[object], bool], timeout: float,
              what: str):
        deadline = time.monotonic() + timeout
        value = None
        while True:
            value = probe()
            if predicate(value):
                return value
            if time.monotonic() >= deadline:
                raise LocalSlurmError(f"timed out after {timeout:g}s waiting for {what} "
                                      f"(last: {value!r})\n{self.log_tail()}")
            time.sleep(POLL)


def _fields(scontrol_one_line: str) -> dict[str, str]:
    """`scontrol -o show` output as a dict. Values with spaces (Reason=...) keep only their first
    word; callers that need a Reason read the raw output."""
    return {k: v for k, sep, v in (token.partition("=") for token in scontrol_one_line.split()) if sep}


def _check_programs(programs: Programs) -> None:
    """Refuse what slurmctld would silently turn into "power saving disabled"."""
    given = [p for p in (programs.resume, programs.suspend, programs.resume_fail) if p]
    if not given:
        return
    if not (programs.resume and programs.suspend):
        raise ValueError("power saving needs both resume_program and suspend_program "
                         "(slurmctld disables it, silently, if either is missing)")
    for program in given:
        path = Path(program)
        if not path.is_absolute():
            raise ValueError(f"{program}: slurmctld needs an absolute path")
        mode = path.stat().st_mode
        if not mode & stat.S_IXUSR or mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ValueError(f"{program}: must be executable and not group- or world-writable, "
                             "or slurmctld disables power saving")


def _interpreter(program: Path) -> str | None:
    """The interpreter on a script's #! line (None for a binary)."""
    with open(program, "rb") as f:
        first = f.readline(256)
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else None


def _resume_timeout(power_save: Mapping[str, str | int]) -> int:
    return int(power_save.get("ResumeTimeout", DEFAULT_POWER_SAVE["ResumeTimeout"]))


def _sleep_until(wall: float) -> None:
    while (left := wall - time.time()) > 0:
        time.sleep(min(left, POLL))

"""Start the three programs as slurmctld does and keep track of them until they end.

Like slurmctld 22.05: the installed console scripts (elastic-resume, ...) with argv [program,
HOSTLIST], an environment of SLURM_CONF only (plus SLURM_RESUME_FILE, a pipe with the 22.05
resume-file JSON, for the ResumeProgram), fds 0-2 closed, cwd /. Each runs in a process group of
its own, as under 23.02+'s slurmscriptd, whose timeout kill (SIGTERM to the group, SIGKILL 10 ms
later) and the soak's random SIGKILLs go to that group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from elastic.hostlists import compress

PROGRAMS = {"resume": "elastic-resume", "suspend": "elastic-suspend", "resume-fail": "elastic-resume-fail"}


@dataclass
class Run:
    program: str
    nodes: list[str]
    process: subprocess.Popen[bytes]
    started: float
    killed: str = ""  # "", "SIGKILL", "timeout"
    ended: float | None = None
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe(self) -> str:
        end = f"exit {self.returncode}" if not self.killed else f"killed ({self.killed})"
        took = f"{(self.ended or time.time()) - self.started:.1f}s"
        return f"{self.program} {compress(self.nodes)} pid {self.pid}: {end} after {took}"


@dataclass
class Launcher:
    slurm_conf: Path
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    running: list[Run] = field(default_factory=list)
    done: list[Run] = field(default_factory=list)

    def start(self, program: str, nodes: list[str]) -> Run:
        env = {"SLURM_CONF": str(self.slurm_conf)}
        hostlist = compress(nodes)
        pass_fds: tuple[int, ...] = ()
        read_fd = None
        if program == "resume":
            read_fd, write_fd = os.pipe()
            os.write(write_fd, json.dumps({"jobs": [], "all_nodes": hostlist}).encode())
            os.close(write_fd)
            env["SLURM_RESUME_FILE"] = f"/proc/self/fd/{read_fd}"
            pass_fds = (read_fd,)
        try:
            process = subprocess.Popen([str(self.bin_dir / PROGRAMS[program]), hostlist], env=env, cwd="/",
                                       pass_fds=pass_fds, preexec_fn=_close_standard_fds, start_new_session=True)
        finally:
            if read_fd is not None:
                os.close(read_fd)
        run = Run(program, list(nodes), process, time.time())
        self.running.append(run)
        return run

    def reap(self) -> list[Run]:
        """The runs that ended since the last call."""
        ended = [run for run in self.running if run.process.poll() is not None]
        for run in ended:
            run.returncode = run.process.returncode
            run.ended = time.time()
            self.running.remove(run)
            self.done.append(run)
        return ended

    def kill(self, run: Run) -> None:
        """SIGKILL the run's process group, as a hard timeout kill would."""
        run.killed = run.killed or "SIGKILL"
        _signal_group(run, signal.SIGKILL)

    def timeout_kill(self, run: Run) -> None:
        """23.02+'s kill after max(ResumeTimeout, SuspendTimeout): SIGTERM, SIGKILL 10 ms later."""
        run.killed = "timeout"
        _signal_group(run, signal.SIGTERM)
        time.sleep(0.01)
        _signal_group(run, signal.SIGKILL)

    def wait_all(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while self.running and time.time() < deadline:
            self.reap()
            time.sleep(0.05)
        for run in list(self.running):
            self.kill(run)
            run.process.wait()
        self.reap()


def _signal_group(run: Run, sig: signal.Signals) -> None:
    try:
        os.killpg(run.pid, sig)  # its own session: the group id is its pid
    except ProcessLookupError:
        pass


def _close_standard_fds() -> None:
    for fd in (0, 1, 2):
        os.close(fd)

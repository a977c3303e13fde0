"""Fixtures for a real local Slurm (elastic.lab.slurm.LocalSlurm) and for stand-in power-save
programs that record how slurmctld ran them."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from elastic.lab.slurm import LocalSlurm
from elastic.lab.slurm.install import SlurmInstall
from elastic.lab.world import LabWorld

# Writes one block per call: argv, the exact environment (from /proc, not from `env`, which a
# shell would add PWD to), whether fds 0-2 were open when slurmctld exec'd it and what they were,
# uid, pid, cwd, blocked signals, and the resume file's content.
RECORDER = r"""#!/bin/sh
# The signal mask first, with no fork: dash clears its mask after it first waits for a child.
while read -r key value; do [ "$key" = "SigBlk:" ] && sigblk=$value; done < /proc/$$/status
if [ -e /proc/$$/fd/0 ]; then f0=open; else f0=closed; fi
if [ -e /proc/$$/fd/1 ]; then f1=open; else f1=closed; fi
if [ -e /proc/$$/fd/2 ]; then f2=open; else f2=closed; fi
fd0=$(/usr/bin/readlink /proc/$$/fd/0); fd1=$(/usr/bin/readlink /proc/$$/fd/1); fd2=$(/usr/bin/readlink /proc/$$/fd/2)
conf_dir=$(/usr/bin/dirname "$SLURM_CONF")
if [ -f "$conf_dir/elastic.yaml" ]; then yaml=yes; else yaml=no; fi
{
    echo "call $(/usr/bin/id -u) $f0,$f1,$f2 $yaml $*"
    echo "pid $$"
    echo "cwd $(/usr/bin/readlink /proc/$$/cwd)"
    echo "fd_targets ${fd0:--} ${fd1:--} ${fd2:--}"
    echo "sigblk $sigblk"
    /usr/bin/tr '\0' '\n' < /proc/$$/environ | /usr/bin/sed 's/^/env /'
    if [ -n "$SLURM_RESUME_FILE" ]; then echo "resume_file $(/usr/bin/cat "$SLURM_RESUME_FILE")"; fi
    echo "end"
} >> LOG 2>&1
AFTER
exit 0
"""


class Recorder:
    """A stand-in ResumeProgram/SuspendProgram: a shell script that appends each call to a log."""

    def __init__(self, path: Path, log: Path):
        self.path = path
        self.log = log

    def calls(self) -> list[dict]:
        """Each finished call as {"uid", "fds", "elastic_yaml", "argv", "env", "pid", "cwd", "sigblk",
        "fd_targets", "resume_file"}: fds "open"/"closed" per fd 0-2, fd_targets what they were
        ("/dev/null", "pipe:[123]", "-" when closed). A call still being written (no "end" line
        yet) is left out, so a reader never sees half a block."""
        calls: list[dict] = []
        if not self.log.exists():
            return calls
        finished = 0
        for line in self.log.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "call":
                uid, fds, yaml, *argv = rest.split(" ")
                calls.append({"uid": int(uid), "fds": fds, "elastic_yaml": yaml == "yes", "argv": argv, "env": {}})
            elif kind == "env":
                key, _, value = rest.partition("=")
                calls[-1]["env"][key] = value
            elif kind == "pid":
                calls[-1]["pid"] = int(rest)
            elif kind == "cwd":
                calls[-1]["cwd"] = rest
            elif kind == "sigblk":
                calls[-1]["sigblk"] = rest
            elif kind == "fd_targets":
                calls[-1]["fd_targets"] = rest.split(" ")
            elif kind == "resume_file":
                calls[-1]["resume_file"] = rest
            elif kind == "end":
                finished = len(calls)
        return calls[:finished]

    def wait_calls(self, count: int = 1, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(calls := self.calls()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.path.name}: {len(calls)} calls after {timeout:g}s, wanted {count}")
            time.sleep(0.1)
        return calls


@pytest.fixture
def recorder() -> Callable[..., Recorder]:
    """make(directory, name, after="") -> a recording program at directory/name, mode 0755.

    `after` is shell run after recording, with the node list in $1 (e.g. an scontrol update).
    """

    def make(directory: Path, name: str, after: str = "") -> Recorder:
        log = directory / f"{name}.calls"
        log.touch(mode=0o666)
        log.chmod(0o666)  # the program may run as SlurmUser
        path = directory / name
        path.write_text(RECORDER.replace("LOG", str(log)).replace("AFTER", after))
        path.chmod(0o755)
        return Recorder(path, log)

    return make


@pytest.fixture
def local_slurm(tmp_path, slurm_install: SlurmInstall) -> Iterator[Callable[..., LocalSlurm]]:
    """make(workdir=None, **LocalSlurm kwargs) -> a started LocalSlurm of the Slurm chosen with
    --slurm; all stopped at teardown, and teardown fails if any daemon started by one of them is
    still alive."""
    if not slurm_install.available():
        pytest.fail(f"no slurmctld in {slurm_install.describe()}: ./run.sh installs Debian's slurmctld, "
                    "slurmd, slurm-client, munge")
    clusters: list[LocalSlurm] = []

    def make(workdir: Path | None = None, **kwargs) -> LocalSlurm:
        cluster = LocalSlurm(workdir or tmp_path / f"slurm{len(clusters)}", **kwargs)
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        cluster.stop()
    left = [pid for cluster in clusters for pid in cluster.running_pids()]
    assert not left, f"daemons still running after stop(): {left}"


@pytest.fixture
def shared_dir(slurm_install: SlurmInstall) -> Iterator[Path]:
    """A scratch directory that users other than root can enter (tmp_path's parents are 0700),
    in /tmp (of the Debian root, when the tests run one)."""
    path = Path(tempfile.mkdtemp(prefix="lab-slurm-", dir=slurm_install.tmpdir() or "/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# A LabWorld factory: world(**LabWorld options) -> a started world, stopped at teardown.
@pytest.fixture
def world(tmp_path):
    worlds: list[LabWorld] = []

    def make(**kwargs) -> LabWorld:
        made = LabWorld(tmp_path / f"world{len(worlds)}", **kwargs)
        worlds.append(made)
        return made.start()

    yield make
    for made in worlds:
        made.stop()

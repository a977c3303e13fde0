"""Which Slurm the lab runs: this machine's own packages, or those of a Debian root file system.

A `SlurmInstall` says how to run Slurm's programs (`command()`), which version they are
(`version`), where a cluster's files must live so the daemons see them (`tmpdir()`), which
scontrol elastic should be configured with and which programs slurmctld should run.

With a root (`elastic.lab.slurm.roots` builds them: Debian 13's Slurm 24.11, sid's 26.05) every
Slurm program runs chrooted into it, in a mount namespace of its own with /proc, /sys, /dev and the
repository (at /src) bound in; the mounts vanish with the process. The root holds a symlink from its
own host path to "/", so a host path below the root names the same file inside it: a cluster's
work directory, its slurm.conf and elastic.yaml are written and read under one path on both sides.
The network is shared, so the emulator on the host's 127.0.0.1 is reached from inside.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HOST = "host"
SLURMCTLD = "/usr/sbin/slurmctld"
PROGRAM_NAMES = {"resume": "elastic-resume", "suspend": "elastic-suspend", "resume_fail": "elastic-resume-fail"}
REPO_ROOT = Path(__file__).resolve().parents[3]

# What `--slurm` / ELASTIC_SLURM accept besides "host" and a root's path: a Slurm release names the
# Debian suite that ships it.
SUITE_OF_VERSION = {"24.11": "trixie", "26.05": "sid"}
VERSION_OF_SUITE = {suite: version for version, suite in SUITE_OF_VERSION.items()}


class SlurmInstallError(RuntimeError):
    """The Slurm asked for is not there (not installed, root not built, wrong version)."""


@dataclass(frozen=True)
class SlurmInstall:
    root: Path | None = None  # None: this machine's own Slurm

    @property
    def label(self) -> str:
        return HOST if self.root is None else self.root.name

    # -- running programs ------------------------------------------------------------------

    def command(self, argv: list[str], cwd: Path | str | None = None) -> list[str]:
        """argv to run a program of this Slurm (a path as seen inside the root), with `cwd`.

        On the host that is argv itself (the caller passes cwd to Popen). In a root it is the
        root's `enter` script, which keeps the pid: a daemon started through it is stopped by
        the pid Popen returned.
        """
        if self.root is None:
            return list(argv)
        return [str(self.root / ".elastic-lab" / "enter"), str(cwd or "/"), *argv]

    def available(self) -> bool:
        if self.root is None:
            return os.access(SLURMCTLD, os.X_OK)
        return (self.root / ".elastic-lab" / "enter").is_file() and os.access(self.root / SLURMCTLD[1:], os.X_OK)

    @functools.cached_property
    def version(self) -> tuple[int, int, int]:
        """slurmctld's version, from `slurmctld -V` ("slurm-wlm 24.11.5" on Debian)."""
        if not self.available():
            raise SlurmInstallError(f"no slurmctld in {self.describe()}")
        done = subprocess.run(self.command([SLURMCTLD, "-V"]), capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, check=False)
        return parse_version(done.stdout + done.stderr)

    @property
    def version_text(self) -> str:
        major, minor, micro = self.version
        return f"{major}.{minor:02d}.{micro}"  # as Slurm writes it: 26.05.5

    def user_ids(self, name: str) -> tuple[int, int]:
        """uid and gid of a user of this Slurm's system (the root's /etc/passwd in a root)."""
        if self.root is None:
            import pwd

            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        for line in (self.root / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[0] == name:
                return int(fields[2]), int(fields[3])
        raise KeyError(f"no user {name!r} in {self.root}/etc/passwd")

    def describe(self) -> str:
        if self.root is None:
            return "this machine's Slurm packages"
        return f"the Debian {self.label} root {self.root}"

    # -- paths -----------------------------------------------------------------------------

    def tmpdir(self) -> Path | None:
        """Where a cluster's files may go (for tempfile's dir=): the root's /tmp, or the default."""
        return None if self.root is None else self.root / "tmp"

    def contains(self, path: Path) -> bool:
        return self.root is None or Path(path).resolve().is_relative_to(self.root)

    def inside(self, path: Path | str) -> str:
        """`path` as Slurm's processes see it (shorter than the host path, for socket names)."""
        path = Path(path)
        if self.root is None or not path.is_relative_to(self.root):
            return str(path)
        return "/" + str(path.relative_to(self.root))

    @property
    def scontrol(self) -> str:
        """scontrol for elastic's config (`slurm.scontrol`): one path that works for a program
        slurmctld runs and for an admin command on the host."""
        if self.root is None:
            return shutil.which("scontrol") or "/usr/bin/scontrol"
        return str(self.root / ".elastic-lab" / "bin" / "scontrol")

    @property
    def bin_dir(self) -> Path | None:
        """Wrappers for scontrol, sbatch, squeue, sinfo, scancel from the host (None: use PATH)."""
        return None if self.root is None else self.root / ".elastic-lab" / "bin"

    def programs(self) -> dict[str, Path]:
        """elastic's three programs for slurm.conf: those of the venv slurmctld can run."""
        if self.root is not None:
            from elastic.lab.slurm import roots

            bindir = self.root / roots.VENV[1:] / "bin"
            return {key: bindir / name for key, name in PROGRAM_NAMES.items()}
        import sys

        # The console scripts beside this Python when installed (their #! names this interpreter:
        # slurmctld gives programs no PATH), else the repository's.
        bindir = Path(sys.executable).parent
        if all((bindir / name).is_file() for name in PROGRAM_NAMES.values()):
            return {key: bindir / name for key, name in PROGRAM_NAMES.items()}
        return {"resume": REPO_ROOT / "resume.py", "suspend": REPO_ROOT / "suspend.py",
                "resume_fail": REPO_ROOT / "resume_fail.py"}


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise SlurmInstallError(f"no Slurm version in {text.strip()!r}")
    major, minor, micro = (int(part) for part in match.groups())
    return major, minor, micro


def resolve(spec: str | None = None, *, build: bool = False, log=None) -> SlurmInstall:
    """The Slurm named by `spec` (default: $ELASTIC_SLURM, else "host").

    "host" (or "", or the host's own X.Y): this machine's packages. "24.11", "26.05", "trixie",
    "sid": the root of that Debian suite under elastic.lab.slurm.roots.ROOTS_DIR, built first when
    `build` (else an error saying how). An absolute path: a root built there. A root's project
    install is brought up to date with this checkout.
    """
    from elastic.lab.slurm import roots

    spec = (os.environ.get("ELASTIC_SLURM", "") if spec is None else spec).strip()
    if spec in ("", HOST):
        return SlurmInstall()
    if spec.startswith("/"):
        root = Path(spec)
        want = None
    else:
        suite = SUITE_OF_VERSION.get(spec, spec)
        if suite not in VERSION_OF_SUITE:
            host = SlurmInstall()
            if re.fullmatch(r"\d+\.\d+", spec) and host.available() and host.version[:2] == _xy(spec):
                return host
            known = ", ".join([HOST, *SUITE_OF_VERSION, *VERSION_OF_SUITE])
            raise SlurmInstallError(f"unknown Slurm {spec!r}: one of {known}, or a root's absolute path")
        root = roots.root_path(suite)
        want = _xy(VERSION_OF_SUITE[suite])
        if build:
            roots.build(suite, log=log)
    if not roots.is_built(root):
        hint = f"python -m elastic.lab.slurm.roots build {root.name}" if not spec.startswith("/") else "build it"
        raise SlurmInstallError(f"no Debian root at {root}: {hint}")
    roots.prepare(root, log=log)
    install = SlurmInstall(root.resolve())
    if want is not None and install.version[:2] != want:
        raise SlurmInstallError(f"{install.describe()} has Slurm {install.version_text}, not {spec} "
                                f"(Debian moved on? rebuild it, or name the root's path)")
    return install


def _xy(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


@functools.cache
def default_install() -> SlurmInstall:
    """The Slurm named by $ELASTIC_SLURM (read once per process), for LocalSlurm's default."""
    return resolve(None)

"""Debian root file systems with a newer Slurm, for the lab: trixie (Debian 13, Slurm 24.11) and
sid (Debian unstable, Slurm 26.05 today). Built once with debootstrap, reused while complete.

    python -m elastic.lab.slurm.roots build [trixie|sid|all]   # debootstrap + venv + project
    python -m elastic.lab.slurm.roots status
    python -m elastic.lab.slurm.roots run trixie -- /opt/elastic/bin/python -m pytest tests/unit
    python -m elastic.lab.slurm.roots remove sid

A root is `debootstrap --variant=minbase --include=slurmctld,slurmd,slurm-client,munge,python3,
python3-venv SUITE DIR` plus, in it, a venv at /opt/elastic with this repository installed
editable from /src (with its test extras), and `.elastic-lab/`: `enter` (run a program inside,
keeping its pid), `bin/` (scontrol, sbatch, ... of the root, callable from the host), and a
symlink from the root's own host path to "/" so host paths below the root work inside it.

Nothing is mounted on the host: `enter` makes a private mount namespace per program
(`unshare --mount --propagation private`), binds /proc, /sys, /dev (and a fresh /dev/shm), the
repository at /src, the host's /etc/resolv.conf and CA bundle (read-only, for pip) into the root,
then chroots. The mounts go when the last process of that namespace exits, so a failed test or a
killed daemon leaves no mount behind, and `rm -rf` of a root never reaches the host's /dev.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from elastic.lab.slurm.install import REPO_ROOT, VERSION_OF_SUITE

ROOTS_DIR = Path(os.environ.get("ELASTIC_ROOTS", "/var/tmp/elastic-roots"))
MIRROR = os.environ.get("ELASTIC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITES = tuple(VERSION_OF_SUITE)
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "python3", "python3-venv"]
VENV = "/opt/elastic"
LAB = ".elastic-lab"
WRAPPED = ["scontrol", "sbatch", "squeue", "sinfo", "scancel", "srun"]
INNER_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Log = Callable[[str], None]


def root_path(suite: str) -> Path:
    return ROOTS_DIR.resolve() / suite


def is_built(root: Path) -> bool:
    return (root / LAB / "debootstrap.json").is_file()


def _say(log: Log | None, text: str) -> None:
    (log or (lambda line: print(line, file=sys.stderr, flush=True)))(text)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time (a test session and a demo may both want a root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- building ---------------------------------------------------------------------------------


def build(suite: str, *, log: Log | None = None, force: bool = False) -> Path:
    """The root of `suite`, debootstrapped now unless a complete one is there; then prepared."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}: one of {', '.join(SUITES)}")
    root = root_path(suite)
    with _locked(ROOTS_DIR / f".{suite}.lock"):
        if force and root.exists():
            remove(suite)
        if not is_built(root):
            _debootstrap(suite, root, log)
    prepare(root, log=log)
    return root


def _debootstrap(suite: str, root: Path, log: Log | None) -> None:
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(debootstrap, os.X_OK):
        raise RuntimeError("debootstrap is missing: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise RuntimeError("building a root needs root (debootstrap, chroot)")
    building = root.with_name(f".{suite}.building")
    shutil.rmtree(building, ignore_errors=True)  # an interrupted build: never mounted on, plain files
    shutil.rmtree(root, ignore_errors=True)  # incomplete
    logfile = ROOTS_DIR.resolve() / f"{suite}.debootstrap.log"
    argv = [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(building), MIRROR]
    _say(log, f"building the Debian {suite} root (Slurm {VERSION_OF_SUITE[suite]}): {' '.join(argv)} "
              f"(log: {logfile})")
    started = time.monotonic()
    with open(logfile, "w") as out:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-15:])
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"debootstrap {suite} failed with exit {done.returncode}:\n{tail}")
    # Debian's packages leave their .debs and nothing else we need; policy-rc.d is moot (no init).
    for deb in (building / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()
    versions = _dpkg_versions(building, ["slurmctld", "slurmd", "munge", "python3"])
    (building / LAB).mkdir(exist_ok=True)
    (building / LAB / "debootstrap.json").write_text(json.dumps(
        {"suite": suite, "mirror": MIRROR, "packages": versions, "seconds": round(time.monotonic() - started, 1),
         "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
    building.rename(root)
    _say(log, f"built {root} in {time.monotonic() - started:.0f} s: "
              + ", ".join(f"{name} {version}" for name, version in versions.items()))


def _dpkg_versions(root: Path, names: list[str]) -> dict[str, str]:
    """Versions from the root's dpkg status file (read on the host: no chroot needed)."""
    found: dict[str, str] = {}
    package = None
    for line in (root / "var" / "lib" / "dpkg" / "status").read_text(errors="replace").splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and package in names:
            found[package] = line.split(": ", 1)[1]
    return {name: found.get(name, "?") for name in names}


def remove(suite: str) -> None:
    root = root_path(suite)
    if root.exists():
        # Nothing is ever mounted here in the host's namespace (see the module doc), and rmtree
        # does not follow the root's symlink to itself.
        shutil.rmtree(root)


# -- preparing: scripts, the symlink, the venv and the project --------------------------------


ENTER = """#!/bin/sh
# Written by elastic.lab.slurm.roots: run PROGRAM inside the Debian root {root}
# usage: enter CWD PROGRAM [ARG...]   (CWD as seen inside; "/" if it does not exist there)
# The pid stays the program's: unshare, sh and chroot each exec the next. Mounts are made in a
# private mount namespace and vanish with its last process; nothing is mounted on the host.
if [ "$#" -lt 2 ]; then echo "usage: $0 CWD PROGRAM [ARG...]" >&2; exit 2; fi
exec /usr/bin/unshare --mount --propagation private -- /bin/sh '{root}/{lab}/namespace' '{root}' "$@"
"""

NAMESPACE = """# Written by elastic.lab.slurm.roots; run by `enter` (with the host's sh) in a new mount namespace.
set -e
root=$1; cwd=$2; shift 2
src=${{ELASTIC_LAB_SRC:-{src}}}
mount --bind /proc "$root/proc"
mount --bind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/dev/shm"
if [ -d "$src" ]; then mount --bind "$src" "$root/src"; fi
for f in /etc/resolv.conf /etc/ssl/certs/ca-certificates.crt; do
    if [ -f "$f" ] && [ -f "$root$f" ]; then mount --bind "$f" "$root$f"; mount -o remount,bind,ro "$root$f"; fi
done
exec /usr/sbin/chroot "$root" /bin/sh -c 'cd "$0" 2>/dev/null || cd /; exec "$@"' "$cwd" "$@"
"""

WRAPPER = """#!/bin/sh
# Written by elastic.lab.slurm.roots: the Debian root's {name}, from the host or from inside
# the root (where this same path leads here too).
if [ / -ef '{root}' ]; then exec /usr/bin/{name} "$@"; fi
exec '{root}/{lab}/enter' "$PWD" /usr/bin/{name} "$@"
"""


def prepare(root: Path, *, src: Path = REPO_ROOT, log: Log | None = None) -> None:
    """Make a built root usable from here: scripts, symlink, venv, and this checkout installed."""
    root = root.resolve()
    with _locked(root / LAB / "lock"):
        _write_scripts(root, src)
        _link_to_itself(root)
        (root / "src").mkdir(exist_ok=True)
        _install_project(root, src, log)


def _write_scripts(root: Path, src: Path) -> None:
    lab = root / LAB
    (lab / "bin").mkdir(parents=True, exist_ok=True)
    _write(lab / "enter", ENTER.format(root=root, lab=LAB), 0o755)
    _write(lab / "namespace", NAMESPACE.format(src=src), 0o644)
    for name in WRAPPED:
        _write(lab / "bin" / name, WRAPPER.format(root=root, lab=LAB, name=name), 0o755)


def _write(path: Path, text: str, mode: int) -> None:
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(path)


def _link_to_itself(root: Path) -> None:
    """ROOT/<ROOT's path> -> "../..": the host path of a file below the root works inside it."""
    link = root / root.relative_to("/")
    target = os.path.relpath(root, link.parent)
    if link.is_symlink() and os.readlink(link) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)


def _install_project(root: Path, src: Path, log: Log | None) -> None:
    if not (src / "setup.cfg").is_file():
        raise RuntimeError(f"{src} is not a checkout of elastic (no setup.cfg): the root installs it from there")
    # The install is editable from /src, where each process binds the checkout it runs from
    # ($ELASTIC_LAB_SRC): only the project's dependencies make a reinstall necessary.
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        if (src / name).is_file():
            digest.update((src / name).read_bytes())
    stamp = root / LAB / "project.sha256"
    installed = (root / VENV[1:] / "bin" / "elastic-resume").is_file()
    if installed and stamp.is_file() and stamp.read_text().strip() == digest.hexdigest():
        return
    started = time.monotonic()
    _say(log, f"installing elastic from {src} into {root}{VENV} (the root's Python)")
    if not (root / VENV[1:] / "bin" / "python").exists():
        run(root, ["/usr/bin/python3", "-m", "venv", VENV], check=True, quiet=True)
    run(root, [f"{VENV}/bin/python", "-m", "pip", "install", "-q", "-e", "/src[test]"], cwd="/src",
        check=True, quiet=True)
    stamp.write_text(digest.hexdigest() + "\n")
    _say(log, f"installed in {time.monotonic() - started:.0f} s")


# -- running inside ---------------------------------------------------------------------------


def inner_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a program run inside: ours minus what names the host's Python and
    Slurm, PATH of the root (its venv first), pip's settings (PIP_*) kept."""
    drop = {"PATH", "HOME", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "ELASTIC_SLURM", "SLURM_CONF"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env.update(PATH=INNER_PATH, HOME="/root", LANG=env.get("LANG", "C.UTF-8"), ELASTIC_LAB_SRC=str(REPO_ROOT))
    env.update(extra or {})
    return env


def run(root: Path, argv: list[str], *, cwd: str = "/", check: bool = False, quiet: bool = False,
        env: dict[str, str] | None = None) -> int:
    """Run argv inside the root; its exit code (stdin, stdout and stderr are ours unless quiet)."""
    enter = root / LAB / "enter"
    output = subprocess.PIPE if quiet else None
    done = subprocess.run([str(enter), cwd, *argv], env=env or inner_env(),
                          stdin=subprocess.DEVNULL if quiet else None,
                          stdout=output, stderr=subprocess.STDOUT if quiet else None, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"in {root}: {' '.join(argv)}: exit {done.returncode}\n{(done.stdout or '')[-3000:]}")
    return done.returncode


def status(root: Path) -> str:
    if not is_built(root):
        return f"{root.name}: not built ({root})"
    info = json.loads((root / LAB / "debootstrap.json").read_text())
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    installed = "project installed" if (root / LAB / "project.sha256").is_file() else "project not installed"
    return f"{root.name}: {root}: {packages}; {installed}; built {info['built']} in {info['seconds']} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elastic.lab.slurm.roots", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="debootstrap the roots not built yet, then install this checkout in them")
    b.add_argument("suites", nargs="*", default=["all"], help="trixie, sid or all (default)")
    b.add_argument("--force", action="store_true", help="rebuild even if complete")
    sub.add_parser("status", help="what is built")
    r = sub.add_parser("run", help="run a command inside a root (cwd /src, the checkout)")
    r.add_argument("suite")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    rm = sub.add_parser("remove", help="delete a root")
    rm.add_argument("suites", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "build":
        suites = SUITES if "all" in args.suites else args.suites
        for suite in suites:
            started = time.monotonic()
            root = build(suite, force=args.force)
            _say(None, f"{status(root)} (ready in {time.monotonic() - started:.0f} s)")
        return 0
    if args.command == "status":
        for suite in SUITES:
            print(status(root_path(suite)))
        return 0
    if args.command == "remove":
        for suite in args.suites:
            remove(suite)
        return 0
    root = root_path(args.suite) if not args.suite.startswith("/") else Path(args.suite)
    if not is_built(root):
        print(f"no root at {root}: python -m elastic.lab.slurm.roots build {args.suite}", file=sys.stderr)
        return 2
    prepare(root)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return run(root, argv or ["/bin/bash"], cwd="/src")


if __name__ == "__main__":
    sys.exit(main())

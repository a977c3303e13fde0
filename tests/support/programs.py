"""Run our three programs the way slurmctld does, against the lab emulator, with a recording
stand-in for scontrol. Shared by the integration tests of the programs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.configs import elastic_yaml

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = {"resume": REPO / "resume.py", "suspend": REPO / "suspend.py", "resume-fail": REPO / "resume_fail.py"}


def write_scontrol_recorder(directory: Path) -> tuple[Path, Path]:
    """An executable that logs its argv as one JSON line per call; answers nothing, exits 0."""
    record = directory / "scontrol.calls"
    script = directory / "scontrol"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        with open({str(record)!r}, "a") as handle:
            handle.write(json.dumps(sys.argv[1:]) + "\\n")
        """))
    script.chmod(0o755)
    return script, record


def scontrol_calls(record: Path) -> list[list[str]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


@dataclass
class Site:
    """A site directory: slurm.conf's dir holding elastic.yaml, clouds.yaml, the scontrol recorder."""

    root: Path
    record: Path

    @property
    def slurm_conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "elastic.log"

    def write_config(self, text: str) -> Path:
        path = self.root / "elastic.yaml"
        path.write_text(text)
        return path

    def run(self, program: str, hostlist: str, *, resume_file: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run like slurmctld 22.05: env holds only SLURM_CONF (+ SLURM_RESUME_FILE), fds 0-2 closed, cwd /."""
        process = self.start(program, hostlist, resume_file=resume_file)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(process.args, returncode)

    def start(self, program: str, hostlist: str, *, resume_file: str | None = None) -> subprocess.Popen:
        """Start like run() (same env, fds 0-2 closed, cwd /) without waiting: the caller waits or kills."""
        env = {"SLURM_CONF": str(self.slurm_conf)}
        pass_fds: tuple[int, ...] = ()
        read_fd = None
        if resume_file is not None:
            read_fd, write_fd = os.pipe()
            os.write(write_fd, resume_file.encode())
            os.close(write_fd)
            env["SLURM_RESUME_FILE"] = f"/proc/self/fd/{read_fd}"
            pass_fds = (read_fd,)
        try:
            return subprocess.Popen([sys.executable, str(PROGRAMS[program]), hostlist], env=env, cwd="/",
                                    pass_fds=pass_fds, preexec_fn=_close_standard_fds)
        finally:
            if read_fd is not None:
                os.close(read_fd)  # the child holds its own copy

    def calls(self) -> list[list[str]]:
        return scontrol_calls(self.record)

    def log_events(self) -> list[dict]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line.startswith("{")]


def _close_standard_fds() -> None:
    for fd in (0, 1, 2):
        os.close(fd)


def make_site(root: Path) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    script, record = write_scontrol_recorder(root)
    (root / "slurm.conf").write_text("# not read by the programs\n")
    return Site(root=root, record=record)


def config_text(site: Site, clouds_yaml: Path, *, clouds: dict[str, dict] | None = None, pools: str, extra: str = "",
                boot_timeout: float = 30) -> str:
    clouds = {name: {"clouds_yaml": clouds_yaml, "max_parallel": 8, "rate": 0, "api_timeout": 10, **options}
              for name, options in (clouds or {"lab": {}}).items()}
    return elastic_yaml(root=site.root, pools=pools, clouds=clouds, scontrol=site.root / "scontrol",
                        timeouts={"boot": boot_timeout, "lock": 20}, extra=extra)


ONE_POOL = """\
cpu:
  nodes: cpu-[001-004]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: lab, network: private}
"""


@contextlib.contextmanager
def one_cloud_site(tmp_path: Path) -> Iterator[tuple[Any, Site]]:
    """The emulator with one quick cloud `lab`, and a site whose one pool `cpu` boots on it."""
    from elastic.lab.cloud import LabCloud

    cloud = {"boot_seconds": 0.1, "delete_seconds": 0.1,
             "flavors": [{"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20}],
             "images": [{"name": "debian-12"}], "networks": [{"name": "private", "cidr": "127.10.0.0/16"}]}
    with LabCloud({"clouds": {"lab": cloud}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, pools=ONE_POOL))
        yield lab, site

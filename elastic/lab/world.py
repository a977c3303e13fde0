"""The local world: the OpenStack emulator and a real local Slurm, wired so a server that turns
ACTIVE starts a real slurmd for its node and a deleted server stops it, as a VM's boot and
deletion would. The demo and the end-to-end tests both run on it.
"""

from __future__ import annotations

import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from elastic.config import Config, load_config
from elastic.lab.cloud import LabCloud
from elastic.lab.slurm import LocalSlurm
from elastic.lab.slurm.install import SlurmInstall, default_install
from elastic.slurm_conf_lines import node_lines, partition_lines

ADDRESS_WAIT_SECONDS = 20

DEFAULT_FLAVORS = [
    {"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
    {"name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
]


def lab_cloud_config(**overrides) -> dict:
    """One emulated cloud with flavors, an image and networks whose addresses stay on loopback."""
    cloud = {
        "boot_seconds": 2.0,
        "delete_seconds": 0.5,
        "flavors": DEFAULT_FLAVORS,
        "images": [{"name": "debian-12"}],
        "networks": [{"name": "private", "cidr": "127.10.0.0/16"},
                     {"name": "public", "cidr": "127.20.0.0/16", "external": True}],
        "keypairs": ["hpc"],
        "quotas": {"instances": 50, "cores": 200, "ram": 512000, "floating_ips": 20},
    }
    cloud.update(overrides)
    return cloud


def installed_programs(install: SlurmInstall | None = None) -> dict[str, Path]:
    """The three programs for slurm.conf: on this machine the console scripts beside this Python
    when installed (their shebang names this interpreter: slurmctld gives programs no PATH), else
    the repo's; in a Debian root those of its venv, where this checkout is installed."""
    return (install or SlurmInstall()).programs()


@dataclass
class LabWorld:
    workdir: Path
    pools_yaml: str  # the `pools:` mapping's body, as in elastic.yaml
    clouds: dict[str, dict] = field(default_factory=lambda: {"lab": lab_cloud_config()})
    power_save: dict[str, int | str] = field(default_factory=dict)
    extra_config: str = ""  # more top-level elastic.yaml keys
    silent_nodes: set[str] = field(default_factory=set)  # their servers boot, but no slurmd starts
    # Which Slurm (this machine's, or a Debian root's): default $ELASTIC_SLURM, else this machine's.
    # In a root, `workdir` must be below it (install.tmpdir()).
    install: SlurmInstall | None = None

    cloud: LabCloud | None = None
    slurm: LocalSlurm | None = None
    config: Config | None = None

    def __post_init__(self):
        if self.install is None:
            self.install = default_install()
        self._hook_lock = threading.Lock()
        self._stopping = False

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def elastic_yaml(self) -> Path:
        return self.etc / "elastic.yaml"

    @property
    def log_file(self) -> Path:
        return self.workdir / "log" / "elastic.log"

    def start(self) -> LabWorld:
        self.etc.mkdir(parents=True, exist_ok=True)
        self.cloud = LabCloud({"clouds": self.clouds}, on_active=self._on_active, on_deleted=self._on_deleted)
        self.cloud.start()
        try:
            clouds_yaml = self.cloud.write_clouds_yaml(self.etc / "clouds.yaml")
            text = self.render_config(clouds_yaml)
            self.elastic_yaml.write_text(text)
            self.config = load_config(self.elastic_yaml)
            programs = installed_programs(self.install)
            self.slurm = LocalSlurm(
                self.workdir,
                node_lines=node_lines(self.config),
                partition_lines=partition_lines(self.config, default=self._default_partition()),
                resume_program=str(programs["resume"]),
                suspend_program=str(programs["suspend"]),
                resume_fail_program=str(programs["resume_fail"]),
                power_save={"SuspendTime": 20, "SuspendTimeout": 30, "ResumeTimeout": 60, **self.power_save},
                elastic_yaml=text,
                slurm=self.install,
            )
            self.slurm.start()
        except BaseException:
            self.stop()
            raise
        return self

    def render_config(self, clouds_yaml: Path) -> str:
        # One path for the programs slurmctld runs and for an admin command on the host (in a
        # Debian root: a wrapper that enters it when called from outside).
        scontrol = self.install.scontrol
        cloud_lines = "\n".join(f"  {name}: {{clouds_yaml: {clouds_yaml}, rate: 0, api_timeout: 10}}"
                                for name in self.clouds)
        return (
            f"cluster: lab\n"
            f"clouds:\n{cloud_lines}\n"
            f"pools:\n{textwrap.indent(textwrap.dedent(self.pools_yaml), '  ')}"
            f"slurm: {{scontrol: {scontrol}}}\n"
            f"timeouts: {{boot: 40, delete: 20, poll: 0.5, lock: 30}}\n"
            f"log_file: {self.log_file}\n"
            f"state_dir: {self.workdir / 'state'}\n"
            f"{self.extra_config}"
        )

    def rewrite_config(self, pools_yaml: str) -> Config:
        """An admin edit: new pools YAML, regenerated node lines, `scontrol reconfigure`."""
        assert self.cloud is not None and self.slurm is not None
        self.pools_yaml = pools_yaml
        text = self.render_config(self.etc / "clouds.yaml")
        self.elastic_yaml.write_text(text)
        self.config = load_config(self.elastic_yaml)
        self.slurm.reconfigure(node_lines=node_lines(self.config),
                               partition_lines=partition_lines(self.config, default=self._default_partition()))
        return self.config

    def _default_partition(self) -> str | None:
        assert self.config is not None
        return next((pool.partition for pool in self.config.pools.values() if pool.partition), None)

    def _on_active(self, cloud: str, name: str, server_id: str, address: str) -> None:
        if self.slurm is None or name in self.silent_nodes:
            return
        # A real VM needs tens of seconds from ACTIVE to a running slurmd (cloud-init), so the
        # resume program has long told Slurm the address. Here slurmd would start ~2 s after
        # ACTIVE: wait for the address as a real boot would, or slurmctld may launch a job to
        # the node's unresolvable name and hold it (launch_failed_requeued_held).
        self._wait_for_address(name, address, timeout=ADDRESS_WAIT_SECONDS)
        with self._hook_lock:
            self.slurm.start_slurmd(name)

    def _wait_for_address(self, name: str, address: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.slurm is not None and not self._stopping:
            try:
                if self.slurm.node_fields(name).get("NodeAddr") == address:
                    return
            except Exception:  # noqa: BLE001 - slurmctld restarting (reconfigure): look again
                pass
            time.sleep(0.2)

    def _on_deleted(self, cloud: str, name: str, server_id: str, address: str) -> None:
        if self.slurm is None:
            return
        with self._hook_lock:
            self.slurm.stop_slurmd(name)

    def stop(self) -> None:
        self._stopping = True
        if self.slurm is not None:
            self.slurm.stop()
        if self.cloud is not None:
            self.cloud.stop()

    def __enter__(self) -> LabWorld:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

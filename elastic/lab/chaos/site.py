"""The soak's world on disk and in the emulator: clouds, the pool YAML, clouds.yaml, the model's
state file and the stand-in scontrol, all in one directory.

The pool layout follows etc/elastic.yaml: `cpu` on the site cloud first and the campus cloud
(another flavor name, floating IPs, max_nodes) second, `bigmem` on the site cloud only; with
three clouds a `gpu` pool uses the third cloud first and the site cloud second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from elastic.hostlists import expand
from elastic.lab.chaos.model import SlurmModel, Timing
from elastic.lab.chaos.scontrol import write_scontrol
from elastic.lab.chaos.store import ModelStore

CLUSTER = "chaos"
SITE, CAMPUS, THIRD = "engage1", "campus", "kaizen"
IMAGE = "debian-12-slurm"
CIDRS = {SITE: "127.61.0.0/16", CAMPUS: "127.62.0.0/16", THIRD: "127.63.0.0/16"}
PUBLIC_CIDR = "127.64.0.0/16"
QUOTAS = {"instances": 40, "cores": 160, "ram": 409600, "floating_ips": 30}


@dataclass(frozen=True)
class Settings:
    """The product's timeouts and the model's, scaled down so a soak cycles quickly."""

    boot: float = 8.0  # timeouts.boot, below ResumeTimeout
    delete: float = 4.0  # timeouts.delete, below SuspendTimeout
    api_timeout: float = 3.0
    probe_timeout: float = 1.0
    cooldown: float = 5.0
    grace: float = 4.0  # reconcile.grace
    timing: Timing = Timing(resume_timeout=24.0, suspend_timeout=8.0, slurmd_timeout=15.0)


def lab_config(clouds: list[str]) -> dict[str, Any]:
    """The emulator's clouds: quick boots and deletes; the campus cloud names the flavor c4.small."""
    config: dict[str, Any] = {}
    for name in clouds:
        flavor = "c4.small" if name == CAMPUS else "m1.small"
        config[name] = {
            "boot_seconds": 0.3, "delete_seconds": 0.2, "images": [{"name": IMAGE}],
            "flavors": [{"name": flavor, "vcpus": 1, "ram": 2048, "disk": 20},
                        {"name": "m1.xlarge", "vcpus": 4, "ram": 8192, "disk": 40}],
            "networks": [{"name": "private", "cidr": CIDRS[name]},
                         {"name": "public", "cidr": PUBLIC_CIDR, "external": True}],
            "quotas": dict(QUOTAS),
        }
    return {"clouds": config}


def pools_for(clouds: list[str]) -> dict[str, Any]:
    cpu_clouds: list[dict[str, Any]] = [
        {"cloud": SITE, "network": "private"},
        {"cloud": CAMPUS, "network": "private", "floating_ip": "public", "flavor": "c4.small", "max_nodes": 10}]
    pools: dict[str, Any] = {
        "cpu": {"nodes": "cpu-[001-016]", "partition": "cloud", "slurm": {"cpus": 1, "real_memory": 1800},
                "boot": {"flavor": "m1.small", "image": IMAGE}, "clouds": cpu_clouds},
        "bigmem": {"nodes": "mem-[01-04]", "partition": "bigmem", "slurm": {"cpus": 4, "real_memory": 7000},
                   "boot": {"flavor": "m1.xlarge", "image": IMAGE}, "clouds": [{"cloud": SITE, "network": "private"}]},
    }
    if THIRD in clouds:
        cpu_clouds.append({"cloud": THIRD, "network": "private"})
        pools["gpu"] = {"nodes": "gpu-[01-04]", "partition": "gpu", "slurm": {"cpus": 1, "real_memory": 1800},
                        "boot": {"flavor": "m1.small", "image": IMAGE},
                        "clouds": [{"cloud": THIRD, "network": "private"}, {"cloud": SITE, "network": "private"}]}
    return pools


@dataclass(frozen=True)
class Site:
    root: Path
    config: Path
    clouds_yaml: Path
    slurm_conf: Path
    scontrol: Path
    store: ModelStore
    nodes: tuple[str, ...]
    settings: Settings

    @property
    def log_file(self) -> Path:
        return self.root / "elastic.log"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"


def make_site(root: Path, clouds: list[str], clouds_yaml: Path, settings: Settings) -> Site:
    """Write the pool YAML, the model (every node idle~) and the stand-in scontrol under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    store = ModelStore(root / "slurm-model.json")
    scontrol = write_scontrol(root, store.path)
    slurm_conf = root / "slurm.conf"
    slurm_conf.write_text("# the chaos soak's Slurm is a model (elastic/lab/chaos/model.py); not read\n")
    pools = pools_for(clouds)
    cloud_options = {"clouds_yaml": str(clouds_yaml), "max_parallel": 8, "rate": 0, "api_timeout": settings.api_timeout,
                     "probe_timeout": settings.probe_timeout, "cooldown": settings.cooldown}
    document = {
        "cluster": CLUSTER,
        "clouds": {name: dict(cloud_options) for name in clouds},
        "pools": pools,
        "slurm": {"scontrol": str(scontrol)},
        "timeouts": {"boot": settings.boot, "delete": settings.delete, "poll": 0.3, "lock": 15},
        "resume_fail": {"max_failures": 3, "window": 60},
        "reconcile": {"grace": settings.grace},
        "log_file": str(root / "elastic.log"),
        "log_level": "info",
        "state_dir": str(root / "state"),
    }
    config = root / "elastic.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    nodes = tuple(node for pool in pools.values() for node in expand(pool["nodes"]))
    store.create(SlurmModel.fresh(nodes, settings.timing, {
        "ResumeProgram": "elastic-resume", "SuspendProgram": "elastic-suspend",
        "ResumeFailProgram": "elastic-resume-fail", "SuspendTime": "30 sec", "ReturnToService": "2"}))
    return Site(root, config, clouds_yaml, slurm_conf, scontrol, store, nodes, settings)

#!/usr/bin/env python3
"""Benchmark the resume and suspend flows against the lab emulator over real HTTP.

Prints, for N nodes: wall time, API requests in all and per node (by endpoint), scontrol calls,
and peak RSS; plus the start-up cost of the programs (modules and time to import the CLI without
and with openstacksdk). Asserts nothing about time: machines are shared and noisy.

    python bench/bench_power.py [--nodes 50 200] [--boot-seconds 1.0]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from elastic.cloud import OpenStackCloud
from elastic.config import load_config
from elastic.lab.cloud import LabCloud
from elastic.power.resume import resume
from elastic.power.services import Services
from elastic.power.suspend import suspend
from elastic.testing import MemoryHistory, RecordingSlurm


def config_text(clouds_yaml: Path, nodes: int, state: Path) -> str:
    return f"""\
cluster: bench
clouds:
  lab: {{clouds_yaml: {clouds_yaml}, max_parallel: 16, rate: 0, api_timeout: 30}}
pools:
  cpu:
    nodes: cpu-[0001-{nodes:04d}]
    slurm: {{cpus: 1, real_memory: 1000}}
    boot: {{flavor: m1.small, image: debian-12}}
    clouds: [{{cloud: lab, network: private}}]
timeouts: {{boot: 600, delete: 300, poll: 1.0}}
state_dir: {state}
log_file: null
"""


def run(nodes: int, boot_seconds: float) -> None:
    cloud = {"boot_seconds": boot_seconds, "delete_seconds": 0.2,
             "flavors": [{"name": "m1.small", "vcpus": 1, "ram": 1024, "disk": 10}],
             "images": [{"name": "debian-12"}], "networks": [{"name": "private", "cidr": "127.10.0.0/16"}],
             "quotas": {"instances": nodes * 2, "cores": nodes * 4, "ram": nodes * 4096, "floating_ips": 10}}
    with tempfile.TemporaryDirectory() as tmp, LabCloud({"clouds": {"lab": cloud}}) as lab:
        tmp = Path(tmp)
        clouds_yaml = lab.write_clouds_yaml(tmp / "clouds.yaml")
        path = tmp / "elastic.yaml"
        path.write_text(config_text(clouds_yaml, nodes, tmp / "state"))
        config = load_config(path)
        slurm = RecordingSlurm()
        svc = Services(config=config, clouds={"lab": OpenStackCloud("lab", config.clouds["lab"])}, slurm=slurm,
                       history=MemoryHistory(), log=structlog.wrap_logger(structlog.testing.CapturingLogger()))
        names = list(config.pools["cpu"].node_names)
        for flow, label in ((resume, "resume"), (suspend, "suspend")):
            lab.reset_requests()
            started = time.perf_counter()
            outcome = flow(names, svc)
            wall = time.perf_counter() - started
            counts = lab.request_counts("lab")
            total = sum(counts.values())
            print(f"{label:8} nodes={nodes:5d} served={len(outcome.served):5d} failed={len(outcome.failed):3d} "
                  f"wall={wall:7.2f}s requests={total:6d} per_node={total / nodes:5.2f} "
                  f"scontrol_calls={len(slurm.states) + len(slurm.addresses)}")
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
            print("          " + ", ".join(f"{k}: {v}" for k, v in top))
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def startup_cost() -> None:
    for label, code in (("import elastic.cli", "import elastic.cli"),
                        ("import elastic.cli + openstack", "import elastic.cli, openstack")):
        best = None
        for _ in range(3):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", f"{code}; import sys; print(len(sys.modules))"],
                                 capture_output=True, text=True, check=True)
            elapsed = time.perf_counter() - started
            best = elapsed if best is None else min(best, elapsed)
        print(f"{label:32} modules={out.stdout.strip():>5} best_of_3={best * 1000:6.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--boot-seconds", type=float, default=1.0)
    args = parser.parse_args()
    startup_cost()
    for nodes in args.nodes:
        run(nodes, args.boot_seconds)


if __name__ == "__main__":
    main()

"""`elastic demo`: the emulator and a real local Slurm; queued jobs boot servers, idle nodes
release them, and a timeline shows Slurm's node states beside the cloud's server states."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from elastic.lab.slurm.install import SlurmInstall, SlurmInstallError, resolve
from elastic.lab.world import LabWorld, lab_cloud_config

DEMO_POOLS = """\
cpu:
  nodes: cpu-[1-4]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1000, features: [small]}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: east, network: private}
    - {cloud: west, network: private}
"""

# East can hold two servers: the third and fourth node fall back to west.
DEMO_CLOUDS = {
    "east": lab_cloud_config(quotas={"instances": 2, "cores": 100, "ram": 100000, "floating_ips": 5}),
    "west": lab_cloud_config(),
}


@dataclass(frozen=True)
class Snapshot:
    nodes: dict[str, str]  # node -> Slurm state
    servers: dict[str, str]  # node -> "STATUS@cloud"
    jobs: dict[str, int]  # job state -> count

    def line_for(self, node: str) -> str:
        return f"  {node:<8} {self.nodes.get(node, '?'):<44} {self.servers.get(node, '-'):<16}"


def take_snapshot(world: LabWorld, nodes: list[str], job_ids: list[int]) -> Snapshot:
    states = {n: world.slurm.node_state(n) for n in nodes}
    servers: dict[str, str] = {}
    for cloud in world.clouds:
        for server in world.cloud.servers(cloud):
            label = "DELETING" if server["task_state"] == "deleting" else server["status"]
            servers[server["name"]] = f"{label}@{cloud}"
    jobs: dict[str, int] = {}
    if job_ids:
        out = world.slurm.run("squeue", "-h", "-t", "all", "-o", "%T", "-j", ",".join(map(str, job_ids)), check=False)
        for state in out.split():
            jobs[state] = jobs.get(state, 0) + 1
        jobs["COMPLETED"] = len(job_ids) - sum(jobs.values()) + jobs.get("COMPLETED", 0)
    return Snapshot(states, servers, jobs)


def run_demo(*, keep: bool = False, out: TextIO = sys.stdout, jobs: int = 4,
             workdir: Path | None = None, clock: Callable[[], float] = time.monotonic,
             install: SlurmInstall | None = None) -> int:
    install = install or SlurmInstall()
    owned_tmp = None
    if workdir is None:
        # In a Debian root the daemons only see files below it: the demo's directory goes there.
        owned_tmp = tempfile.TemporaryDirectory(prefix="elastic-demo-", dir=install.tmpdir())
        workdir = Path(owned_tmp.name)
    say = _printer(out)
    say(f"elastic demo: an OpenStack emulator with two clouds (east: quota of 2 servers, west) and a real "
        f"Slurm {install.version_text} cluster ({install.describe()}) in {workdir}")
    world = LabWorld(workdir, pools_yaml=DEMO_POOLS, clouds=DEMO_CLOUDS, install=install,
                     power_save={"SuspendTime": 15, "SuspendTimeout": 30, "ResumeTimeout": 90})
    try:
        world.start()
        nodes = list(world.config.pools["cpu"].node_names)
        say(f"slurmctld {install.version_text} is up; nodes {', '.join(nodes)} are CLOUD nodes, powered down (idle~).")
        say(f"submitting {jobs} jobs; Slurm will call elastic-resume for the nodes it picks.")
        job_ids = [int(world.slurm.run("sbatch", "--parsable", "-p", "cloud", f"--output={workdir}/job-%j.out",
                                       "--wrap", "echo running on $(hostname -s) as $SLURMD_NODENAME; sleep 5")
                       .strip().split(";")[0]) for _ in range(jobs)]
        started = clock()
        grown = _watch(world, nodes, job_ids, say, started, clock,
                       until=lambda s: s.jobs.get("COMPLETED", 0) == len(job_ids),
                       limit=240, title="growing: jobs queued, servers booting")
        if not grown:
            say("the jobs did not finish in time; see the logs under " + str(workdir / "log"))
            return 1
        for job in job_ids:
            path = workdir / f"job-{job}.out"
            say(f"job {job}: {path.read_text().strip() if path.exists() else '(no output file)'}")
        if keep:
            return _keep_running(world, say)
        say("all jobs done; after SuspendTime (15 s) Slurm calls elastic-suspend for the idle nodes.")
        shrunk = _watch(world, nodes, job_ids, say, started, clock,
                        until=lambda s: not s.servers and all("POWERED_DOWN" in st and "POWERING" not in st
                                                              for st in s.nodes.values()),
                        limit=180, title="shrinking: idle nodes release their servers")
        say(_request_summary(world))
        if not shrunk:
            say("the cluster did not shrink back in time; see " + str(world.log_file))
            return 1
        return 0
    finally:
        world.stop()
        left = world.slurm.running_pids() if world.slurm is not None else []
        say(f"torn down: {len(left)} daemons left running, "
            f"{sum(len(world.cloud.servers(c)) for c in world.clouds) if world.cloud else 0} servers left.")
        if owned_tmp is not None:
            owned_tmp.cleanup()


def _watch(world, nodes, job_ids, say, started, clock, *, until, limit: float, title: str) -> bool:
    say(f"--- {title} ---")
    say(f"  {'node':<8} {'Slurm state':<44} {'server':<16}")
    last = None
    deadline = clock() + limit
    while clock() < deadline:
        snap = take_snapshot(world, nodes, job_ids)
        if snap != last:
            elapsed = clock() - started
            jobs = ", ".join(f"{n} {s.lower()}" for s, n in sorted(snap.jobs.items())) or "none"
            say(f"[+{elapsed:5.1f}s] jobs: {jobs}")
            for node in nodes:
                say(snap.line_for(node))
            booting = sum(1 for v in snap.servers.values() if v.startswith("BUILD"))
            if booting:
                active = sum(1 for v in snap.servers.values() if v.startswith("ACTIVE"))
                say(f"  ... {booting} server(s) booting, {active} active")
            last = snap
        if until(snap):
            return True
        time.sleep(1.0)
    return False


def _request_summary(world: LabWorld) -> str:
    parts = []
    for cloud in world.clouds:
        records = world.cloud.requests(cloud)
        creates = [r for r in records if r["endpoint"] == "POST /servers"]
        accepted = sum(1 for r in creates if r["status"] == 202)
        deletes = sum(1 for r in records if r["endpoint"] == "DELETE /servers/{id}")
        parts.append(f"{cloud}: {len(records)} API requests ({accepted} servers created, "
                     f"{len(creates) - accepted} creates refused, {deletes} deleted)")
    return "cloud traffic: " + "; ".join(parts)


def _keep_running(world: LabWorld, say) -> int:
    say("--keep: the cluster stays up until you press Ctrl-C. In another shell:")
    say(f"  export SLURM_CONF={world.slurm.conf_path}")
    if world.install.bin_dir is not None:
        say(f"  export PATH={world.install.bin_dir}:$PATH   # the root's sinfo, sbatch, squeue, scontrol")
    say("  sinfo; sbatch -p cloud --wrap hostname; squeue; scontrol show node cpu-1")
    say(f"  OS_CLIENT_CONFIG_FILE={world.etc / 'clouds.yaml'} openstack --os-cloud east server list")
    say(f"  tail -f {world.log_file}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping")
    return 0


def _printer(out: TextIO):
    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()
    return say


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="elastic demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster up (until Ctrl-C) after the jobs ran")
    parser.add_argument("--jobs", type=int, default=4, help="how many jobs to submit (default 4)")
    parser.add_argument("--slurm", default=None, metavar="WHICH",
                        help="host (this machine's Slurm, the default), 24.11 (Debian 13's, from a root "
                             "file system built on first use with debootstrap) or 26.05 (Debian sid's); "
                             "default $ELASTIC_SLURM")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("elastic demo: error: needs root (it starts munged, slurmctld and slurmd)", file=sys.stderr)
        return 2
    try:
        install = resolve(args.slurm, build=True, log=lambda line: print(f"elastic demo: {line}", flush=True))
        if not install.available():
            raise SlurmInstallError(f"no slurmctld in {install.describe()}: ./run.sh installs Debian's packages")
        _ = install.version  # runs `slurmctld -V` now: a broken root fails here, not mid-demo
    except (SlurmInstallError, RuntimeError, ValueError) as e:
        print(f"elastic demo: error: {e}", file=sys.stderr)
        return 2
    return run_demo(keep=args.keep, jobs=args.jobs, install=install)

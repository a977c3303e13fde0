#!/usr/bin/env python3
"""Benchmark resume-fail of many nodes as slurmctld runs it (a whole process, bare environment,
fds closed), against the lab emulator over real HTTP, with the real history file and a recording
scontrol. `--servers F`: that fraction of the nodes still has a server (ResumeTimeout left it).

Prints, for N nodes: wall time, requests, history.json writes (its inode changes on each atomic
write), scontrol calls and the exit code. Asserts nothing about time.

    python bench/bench_resume_fail.py [--nodes 1000 10000] [--servers 0.0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from elastic.config import META_CLUSTER, META_NODE, META_POOL
from elastic.lab.cloud import LabCloud

REPO = Path(__file__).resolve().parents[1]


def _recording_scontrol(directory: Path) -> Path:
    record = directory / "scontrol.calls"
    script = directory / "scontrol"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        with open({str(record)!r}, "a") as handle:
            handle.write(json.dumps(sys.argv[1:]) + "\\n")
        """))
    script.chmod(0o755)
    return record


def _count_history_writes(path: Path, stop: threading.Event, seen: set[int]) -> None:
    while not stop.is_set():
        try:
            seen.add(path.stat().st_ino)
        except FileNotFoundError:
            pass
        time.sleep(0.001)


def run(nodes: int, servers: float) -> None:
    cloud = {"boot_seconds": 0.1, "delete_seconds": 0.1,
             "flavors": [{"name": "m1.small", "vcpus": 1, "ram": 1024, "disk": 10}],
             "images": [{"name": "debian-12"}], "networks": [{"name": "private", "cidr": "127.10.0.0/16"}],
             "quotas": {"instances": nodes, "cores": nodes * 4, "ram": nodes * 4096, "floating_ips": 10}}
    with tempfile.TemporaryDirectory() as tmp, LabCloud({"clouds": {"lab": cloud}}) as lab:
        tmp = Path(tmp)
        record = _recording_scontrol(tmp)
        clouds_yaml = lab.write_clouds_yaml(tmp / "clouds.yaml")
        (tmp / "slurm.conf").write_text("# not read\n")
        (tmp / "elastic.yaml").write_text(f"""\
cluster: bench
clouds:
  lab: {{clouds_yaml: {clouds_yaml}, max_parallel: 32, rate: 0, api_timeout: 60}}
pools:
  cpu:
    nodes: cpu-[00001-{nodes:05d}]
    slurm: {{cpus: 1, real_memory: 1000}}
    boot: {{flavor: m1.small, image: debian-12}}
    clouds: [{{cloud: lab, network: private}}]
slurm: {{scontrol: {tmp / 'scontrol'}}}
timeouts: {{boot: 600, delete: 300, poll: 0.5, lock: 60}}
state_dir: {tmp / 'state'}
log_file: {tmp / 'elastic.log'}
""")
        for index in range(1, nodes + 1, max(1, round(1 / servers)) if servers else nodes + 1):
            name = f"cpu-{index:05d}"
            lab.seed_server("lab", name, metadata={META_CLUSTER: "bench", META_NODE: name, META_POOL: "cpu"})
        seeded = len(lab.servers("lab"))
        lab.reset_requests()
        history = tmp / "state" / "history.json"
        stop, inodes = threading.Event(), set()
        watcher = threading.Thread(target=_count_history_writes, args=(history, stop, inodes), daemon=True)
        watcher.start()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(REPO / "resume_fail.py"), f"cpu-[00001-{nodes:05d}]"],
                              env={"SLURM_CONF": str(tmp / "slurm.conf")}, cwd="/", timeout=600,
                              preexec_fn=lambda: [os.close(fd) for fd in (0, 1, 2)])
        wall = time.perf_counter() - started
        stop.set()
        watcher.join()
        requests = sum(lab.request_counts("lab").values())
        calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        left = [s for s in lab.servers("lab") if s["task_state"] != "deleting"]
        print(f"resume-fail nodes={nodes:6d} servers={seeded:5d} exit={done.returncode} wall={wall:6.2f}s "
              f"requests={requests:6d} history_writes={len(inodes)} scontrol_calls={len(calls)} "
              f"servers_left={len(left)}")
        _phases(tmp / "elastic.log")


def _phases(log: Path) -> None:
    """Seconds from the run's first log line to the first and last line of each event."""
    import datetime as dt

    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    if not events:
        return
    stamp = lambda e: dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()  # noqa: E731
    start = stamp(events[0])
    spans: dict[str, list[float]] = {}
    for event in events:
        spans.setdefault(event["event"], []).append(stamp(event) - start)
    print("    " + ", ".join(f"{name} {min(t):.2f}-{max(t):.2f}s" for name, t in spans.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--servers", type=float, default=0.0, help="fraction of nodes that still have a server")
    args = parser.parse_args()
    for nodes in args.nodes:
        run(nodes, args.servers)


if __name__ == "__main__":
    main()

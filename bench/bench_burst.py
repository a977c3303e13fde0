#!/usr/bin/env python3
"""Whole-process burst benchmark: N nodes resumed and suspended the way slurmctld runs elastic,
against the lab emulator in its own process, beside two baseline strategies written for the bench.

The emulator runs as `python -m elastic.lab.cloud` with a per-request latency and a boot time
(BUILD -> ACTIVE) of every server. Strategies:

- elastic: `resume.py HOSTLIST` then `suspend.py HOSTLIST`, each a process with an env holding only
  SLURM_CONF, stdio closed, cwd /, a recording stand-in for scontrol, and elastic.yaml holding only
  what a site must say (its clouds.yaml, the pool): the defaults of the code, unless --cloud-options
  or --timeouts add keys. Resume ends when every node's server is ACTIVE and its address was sent.
  Each N runs twice: "cold", on a fresh state dir (no cached token, no learned boot time, no
  remembered look-ups), then "warm", the same nodes again on the state dir the cold runs left, as
  on a controller that has run before (--no-warm: only cold).
- serial-sdk: one process, one openstacksdk Connection; per node a flavor, image and network
  look-up and a create, one after the other; then wait_for_server per server.
- cli: one `openstack server create` process per node, one after the other, then
  `openstack server list` every 2 s until all are ACTIVE (small N only: ~3 s per process).

Prints one table row per (N, strategy, phase): wall, overhead above the boot floor (wall minus
boot time, for resume), requests per node (from the emulator's request log), 429s, peak RSS of
the strategy's biggest process, and the CPU seconds its processes used (on a loaded machine the
wall times stretch; CPU seconds say how much work a strategy does). Asserts nothing: machines are
shared and noisy; run a point twice when it is near a target.

    python bench/bench_burst.py --nodes 100 1000 --latency 0.05 --boot 10
    python bench/bench_burst.py --nodes 10 --strategies elastic serial-sdk cli
    python bench/bench_burst.py --nodes 1000 --rate-limit 20        # a cloud that answers 429 above 20/s
    python bench/bench_burst.py --nodes 1000 --cloud-options "max_parallel: 64" --timeouts "poll: 1"
    python bench/bench_burst.py --nodes 1 --strategies startup --repeat 3   # one-node suspend start-up
    python bench/bench_burst.py --nodes 100 --show-requests   # each run's requests by endpoint
    python -m venv /tmp/site-venv && /tmp/site-venv/bin/pip install .   # what a site installs; the programs
    # still run this checkout's code (their directory comes first on sys.path), with that venv's packages
    python bench/bench_burst.py --nodes 1 --strategies startup --python /tmp/site-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
OPENSTACK_CLI = Path(PYTHON).with_name("openstack")


@dataclass
class Row:
    nodes: int
    strategy: str
    phase: str
    wall: float
    floor: float
    requests: int
    refused: int
    rss_mib: float
    ok: bool
    cpu: float = 0.0  # CPU seconds (user + system) of the strategy's processes
    note: str = ""


class Emulator:
    """The lab emulator in its own process, and its control endpoint."""

    def __init__(self, root: Path, *, nodes: int, latency: float, boot: float, delete: float,
                 rate_limit: int | None):
        faults: dict = {"latency_seconds": latency}
        if rate_limit:
            faults["rate_limit_per_second"] = rate_limit
        config = {"clouds": {"lab": {
            "boot_seconds": boot, "delete_seconds": delete,
            "flavors": [{"name": "m1.small", "vcpus": 1, "ram": 1024, "disk": 10}],
            "images": [{"name": "debian-12"}],
            "networks": [{"name": "private", "cidr": "127.16.0.0/12"}],
            "quotas": {"instances": nodes * 3 + 10, "cores": nodes * 10 + 10, "ram": nodes * 10240 + 10240,
                       "floating_ips": 10},
            "faults": faults,
        }}}
        (root / "lab.yaml").write_text(yaml.safe_dump(config))
        self.clouds_yaml = root / "clouds.yaml"
        self.process = subprocess.Popen(
            [PYTHON, "-m", "elastic.lab.cloud", "--config", str(root / "lab.yaml"),
             "--clouds-yaml", str(self.clouds_yaml)],
            stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "serving" not in line:
            self.process.kill()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = line.split()[3]

    def _call(self, method: str, path: str) -> dict:
        request = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())

    def reset(self) -> None:
        self._call("POST", "/_lab/reset-requests")

    def records(self) -> list[dict]:
        return self._call("GET", "/_lab/requests?cloud=lab")["requests"]

    def requests(self) -> tuple[int, int, int]:
        """(requests in all, 429s, Keystone requests) since the last reset."""
        records = self.records()
        return (len(records), sum(1 for r in records if r["status"] == 429),
                sum(1 for r in records if r["service"] == "identity"))

    def breakdown(self) -> str:
        """Requests since the last reset by endpoint, creates and deletes of servers left out."""
        counts: dict[str, int] = {}
        for record in (records := self.records()):
            endpoint = record["endpoint"]
            counts[endpoint] = counts.get(endpoint, 0) + 1
        skip = ("POST /servers", "DELETE /servers/{id}")
        start = min((r["time"] for r in records), default=0.0)
        lists = " ".join(f"{r['time'] - start:.1f}" for r in records if r["endpoint"].endswith("/servers/detail"))
        return ", ".join(f"{endpoint} x{count}" for endpoint, count in sorted(counts.items(), key=lambda i: -i[1])
                         if not any(endpoint.endswith(s) for s in skip)) + f"; server lists at {lists} s"

    def servers(self) -> list[dict]:
        return self._call("GET", "/_lab/servers?cloud=lab")["servers"]["lab"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_process(argv: list[str], *, env: dict[str, str], cwd: str = "/", close_stdio: bool = False,
                timeout: float = 1800) -> tuple[int, float, float, float]:
    """(exit code, wall seconds, peak RSS MiB, CPU seconds) of one process."""
    started = time.perf_counter()
    kwargs: dict = {"env": env, "cwd": cwd}
    if close_stdio:
        kwargs["preexec_fn"] = _close_standard_fds
    else:
        kwargs.update(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = subprocess.Popen(argv, **kwargs)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            process.kill()
        time.sleep(0.005)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - started, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def _close_standard_fds() -> None:
    for fd in (0, 1, 2):
        os.close(fd)


def hostlist(nodes: int) -> str:
    width = max(4, len(str(nodes)))
    return f"n-[{1:0{width}d}-{nodes:0{width}d}]"


def names(nodes: int) -> list[str]:
    width = max(4, len(str(nodes)))
    return [f"n-{i:0{width}d}" for i in range(1, nodes + 1)]


# ---- elastic, as slurmctld runs it -----------------------------------------------------------


def elastic_site(root: Path, emulator: Emulator, nodes: int, cloud_options: str, timeouts: str) -> Path:
    site = root / "site"
    site.mkdir()
    record = site / "scontrol.calls"
    scontrol = site / "scontrol"
    scontrol.write_text(textwrap.dedent(f"""\
        #!{PYTHON}
        import json, sys
        with open({str(record)!r}, "a") as handle:
            handle.write(json.dumps(sys.argv[1:]) + "\\n")
        """))
    scontrol.chmod(0o755)
    (site / "slurm.conf").write_text("# not read by the programs\n")
    options = f", {cloud_options}" if cloud_options else ""
    (site / "elastic.yaml").write_text(textwrap.dedent(f"""\
        cluster: bench
        clouds:
          lab: {{clouds_yaml: {emulator.clouds_yaml}{options}}}
        pools:
          cpu:
            nodes: {hostlist(nodes)}
            slurm: {{cpus: 1, real_memory: 1000}}
            boot: {{flavor: m1.small, image: debian-12}}
            clouds: [{{cloud: lab, network: private}}]
        slurm: {{scontrol: {scontrol}}}
        """) + (f"timeouts: {{{timeouts}}}\n" if timeouts else "")
        + f"log_file: {site / 'elastic.log'}\nstate_dir: {site / 'state'}\n")
    return site


def run_elastic(root: Path, emulator: Emulator, nodes: int, boot: float, args: argparse.Namespace) -> list[Row]:
    site = elastic_site(root, emulator, nodes, args.cloud_options, args.timeouts)
    env = {"SLURM_CONF": str(site / "slurm.conf")}
    rows = []
    # cold: a fresh state dir (no token, no learned boot time, no cached look-ups); warm: the same
    # nodes again on the state dir the cold runs left, as a controller that has run before.
    for controller in ("cold", "warm")[:2 if args.warm else 1]:
        for phase, program in (("resume", "resume.py"), ("suspend", "suspend.py")):
            emulator.reset()
            code, wall, rss, cpu = run_process([args.python, str(REPO / program), hostlist(nodes)], env=env,
                                               close_stdio=True)
            total, refused, _ = emulator.requests()
            ok = code == 0
            if phase == "resume":
                active = sum(1 for s in emulator.servers() if s["status"] == "ACTIVE")
                ok = ok and active == nodes
            else:
                ok = ok and not emulator.servers()
            label = f"{phase} ({controller})" if args.warm else phase
            rows.append(Row(nodes, "elastic", label, wall, boot if phase == "resume" else 0.0, total, refused, rss,
                            ok, note=f"exit {code}", cpu=cpu))
            if args.show_requests:
                print(f"  {nodes} {label}: {emulator.breakdown()}", flush=True)
    if args.keep_logs:
        Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
        shutil.copy(site / "elastic.log", Path(args.keep_logs) / f"elastic-{nodes}-{time.time():.0f}.log")
    return rows


# ---- start-up: a one-node suspend as a process, with and without a cached token ---------------


def run_startup(root: Path, emulator: Emulator, nodes: int, boot: float, args: argparse.Namespace) -> list[Row]:
    """resume n-0001 (logs in, keeps the token), then suspend it twice over: with the cached token,
    and again after removing the cache. Rows say when the first request reached the emulator."""
    site = elastic_site(root, emulator, 1, args.cloud_options, args.timeouts)
    env = {"SLURM_CONF": str(site / "slurm.conf")}
    rows = []
    for label, drop_cache in (("suspend-1 cached token", False), ("suspend-1 no token", True)):
        run_process([args.python, str(REPO / "resume.py"), hostlist(1)], env=env, close_stdio=True)
        if drop_cache:
            (site / "state" / "tokens.json").unlink(missing_ok=True)
        emulator.reset()
        started = time.time()
        code, wall, rss, cpu = run_process([args.python, str(REPO / "suspend.py"), hostlist(1)], env=env,
                                           close_stdio=True)
        records = emulator.records()
        first = min((r["time"] for r in records), default=started) - started
        keystone = sum(1 for r in records if r["service"] == "identity")
        logged = _logged_at(site / "elastic.log", "suspend", started)
        if args.show_requests:
            print(f"  {label}: " + ", ".join(f"{r['time'] - started:.2f} s {r['endpoint']} {r['status']}"
                                             for r in sorted(records, key=lambda r: r["time"]))
                  + "; " + ", ".join(f"{event} at {at:.2f} s" for event, at in logged.items()), flush=True)
        rows.append(Row(1, "elastic", label, wall, 0.0, len(records), 0, rss, code == 0 and not emulator.servers(),
                        note=f"first request at {first:.2f} s, {keystone} Keystone requests", cpu=cpu))
    return rows


def _logged_at(log: Path, command: str, started: float) -> dict[str, float]:
    """When the last run of `command` logged its start and its end, in seconds after `started`."""
    import datetime as dt

    found: dict[str, float] = {}
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") in (f"{command}.start", f"{command}.done"):
            at = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp() - started
            if at >= 0:
                found[event["event"]] = at
    return found


# ---- baseline: serial openstacksdk ------------------------------------------------------------

SERIAL_SDK = """
import sys, openstack
from openstack.config import loader
clouds_yaml, count = sys.argv[1], int(sys.argv[2])
config = loader.OpenStackConfig(config_files=[clouds_yaml], vendor_files=[], load_envvars=False)
conn = openstack.connection.Connection(config=config.get_one(cloud="lab"))
servers = []
for name in sys.argv[3:]:
    flavor = conn.compute.find_flavor("m1.small", ignore_missing=False)
    image = conn.image.find_image("debian-12", ignore_missing=False)
    network = conn.network.find_network("private", ignore_missing=False)
    servers.append(conn.compute.create_server(name=name, flavor_id=flavor.id, image_id=image.id,
                                              networks=[{"uuid": network.id}]))
for server in servers:
    conn.compute.wait_for_server(server, interval=2, wait=1200)
"""

SERIAL_SDK_DELETE = """
import sys, openstack
from openstack.config import loader
config = loader.OpenStackConfig(config_files=[sys.argv[1]], vendor_files=[], load_envvars=False)
conn = openstack.connection.Connection(config=config.get_one(cloud="lab"))
servers = []
for name in sys.argv[2:]:
    server = conn.compute.find_server(name, ignore_missing=False)
    conn.compute.delete_server(server)
    servers.append(server)
for server in servers:
    conn.compute.wait_for_delete(server, interval=2, wait=1200)
"""


def run_serial_sdk(root: Path, emulator: Emulator, nodes: int, boot: float, args: argparse.Namespace) -> list[Row]:
    env = {"PATH": "/usr/bin:/bin"}
    rows = []
    for phase, script, argv in (
            ("resume", SERIAL_SDK, [str(emulator.clouds_yaml), str(nodes), *names(nodes)]),
            ("suspend", SERIAL_SDK_DELETE, [str(emulator.clouds_yaml), *names(nodes)])):
        emulator.reset()
        code, wall, rss, cpu = run_process([PYTHON, "-c", script, *argv], env=env, cwd=str(root))
        total, refused, _ = emulator.requests()
        active = sum(1 for s in emulator.servers() if s["status"] == "ACTIVE")
        ok = code == 0 and (phase == "suspend" or active == nodes)
        rows.append(Row(nodes, "serial-sdk", phase, wall, boot if phase == "resume" else 0.0, total, refused, rss, ok,
                        note=f"exit {code}", cpu=cpu))
    return rows


# ---- baseline: one openstack CLI process per node ---------------------------------------------


def run_cli(root: Path, emulator: Emulator, nodes: int, boot: float, args: argparse.Namespace) -> list[Row]:
    if not OPENSTACK_CLI.exists():
        return [Row(nodes, "cli", "resume", 0, boot, 0, 0, 0, False, note="no openstack CLI in this venv")]
    env = {"PATH": "/usr/bin:/bin", "OS_CLIENT_CONFIG_FILE": str(emulator.clouds_yaml), "OS_CLOUD": "lab",
           "HOME": str(root)}
    rows = []
    emulator.reset()
    started = time.perf_counter()
    peak = 0.0
    ok = True
    cpu = 0.0
    for name in names(nodes):
        code, _, rss, used = run_process([str(OPENSTACK_CLI), "server", "create", "--flavor", "m1.small", "--image",
                                          "debian-12", "--network", "private", name], env=env, cwd=str(root))
        peak, ok, cpu = max(peak, rss), ok and code == 0, cpu + used
    while ok:
        listing = subprocess.run([str(OPENSTACK_CLI), "server", "list", "-f", "json"], env=env, cwd=str(root),
                                 capture_output=True, text=True)
        if listing.returncode != 0:
            ok = False
            break
        if sum(1 for s in json.loads(listing.stdout) if s["Status"] == "ACTIVE") >= nodes:
            break
        time.sleep(2)
    wall = time.perf_counter() - started
    total, refused, _ = emulator.requests()
    rows.append(Row(nodes, "cli", "resume", wall, boot, total, refused, peak, ok, cpu=cpu))
    emulator.reset()
    started = time.perf_counter()
    cpu = 0.0
    for name in names(nodes):
        code, _, rss, used = run_process([str(OPENSTACK_CLI), "server", "delete", "--wait", name], env=env,
                                         cwd=str(root))
        peak, ok, cpu = max(peak, rss), code == 0, cpu + used
    total, refused, _ = emulator.requests()
    rows.append(Row(nodes, "cli", "suspend", time.perf_counter() - started, 0.0, total, refused, peak, ok, cpu=cpu))
    return rows


# ---- the table --------------------------------------------------------------------------------


def print_header() -> None:
    print("| N | strategy | phase | wall s | overhead s | requests/node | 429s | peak RSS MiB | CPU s | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")


def print_row(row: Row) -> None:
    per_node = row.requests / row.nodes if row.nodes else 0.0
    overhead = f"{row.wall - row.floor:.1f}" if row.phase.startswith("resume") else "-"
    ok = ("yes" + (f" ({row.note})" if row.note and not row.note.startswith("exit") else "")) if row.ok \
        else f"NO ({row.note})"
    wall = f"{row.wall:.2f}" if row.wall < 10 else f"{row.wall:.1f}"  # a one-node run is near 1 s
    print(f"| {row.nodes} | {row.strategy} | {row.phase} | {wall} | {overhead} | {per_node:.2f} | "
          f"{row.refused} | {row.rss_mib:.0f} | {row.cpu:.1f} | {ok} |", flush=True)


STRATEGIES = {"elastic": run_elastic, "serial-sdk": run_serial_sdk, "cli": run_cli, "startup": run_startup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the emulator adds to every request")
    parser.add_argument("--boot", type=float, default=10.0, help="seconds from create to ACTIVE")
    parser.add_argument("--delete", type=float, default=0.5, help="seconds from delete to gone")
    parser.add_argument("--rate-limit", type=int, default=None, help="the emulator answers 429 above this many/s")
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=["elastic"])
    parser.add_argument("--max-baseline-nodes", type=int, default=100,
                        help="baselines run only up to this N (serial-sdk), cli up to a tenth of it")
    parser.add_argument("--cloud-options", default="", help='extra keys of the bench cloud, e.g. "max_parallel: 64"')
    parser.add_argument("--timeouts", default="", help='timeouts keys, e.g. "poll: 1"')
    parser.add_argument("--keep-logs", metavar="DIR", help="copy each elastic run's log into DIR")
    parser.add_argument("--repeat", type=int, default=1, help="run each point this many times")
    parser.add_argument("--no-warm", dest="warm", action="store_false",
                        help="elastic: only the cold runs (a fresh state dir), not the warm ones after them")
    parser.add_argument("--python", default=PYTHON,
                        help="the interpreter that runs elastic's programs (default: this one). The repository's "
                             "dev venv also holds the test tools, and openstackclient's cmd2 brings rich, which "
                             "structlog then imports (~25 ms); a venv with only `pip install .` is what a site runs")
    parser.add_argument("--show-requests", action="store_true",
                        help="print each elastic run's requests by endpoint (creates and deletes left out)")
    args = parser.parse_args()
    print(f"latency {args.latency * 1000:.0f} ms, boot {args.boot:g} s, delete {args.delete:g} s"
          + (f", programs run by {args.python}" if args.python != PYTHON else "")
          + (f", 429 above {args.rate_limit}/s" if args.rate_limit else "")
          + (f", cloud options: {args.cloud_options}" if args.cloud_options else "")
          + (f", timeouts: {args.timeouts}" if args.timeouts else ""), flush=True)
    print_header()
    for nodes in args.nodes:
        for strategy in args.strategies:
            if strategy == "serial-sdk" and nodes > args.max_baseline_nodes:
                continue
            if strategy == "cli" and nodes > max(args.max_baseline_nodes // 10, 1):
                continue
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
                    root = Path(tmp)
                    emulator = Emulator(root, nodes=nodes, latency=args.latency, boot=args.boot, delete=args.delete,
                                        rate_limit=args.rate_limit)
                    try:
                        for row in STRATEGIES[strategy](root, emulator, nodes, args.boot, args):
                            print_row(row)
                    finally:
                        emulator.stop()


if __name__ == "__main__":
    main()

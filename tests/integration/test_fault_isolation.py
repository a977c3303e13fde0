"""The fault matrix behind "one cloud's trouble stays on that cloud".

Two clouds in one emulator: A (`east`) and B (`west`). Pool `both` (both-[1-4]) uses [A, B], A
first; pool `bonly` (bonly-[1-2]) uses B only. For each fault of A the real programs, run as
slurmctld runs them, must:

1. resume every node (exit 0, nothing put in a Slurm state): `both` on B (or, for faults that
   still let A answer sometimes, each node on exactly one cloud), `bonly` on B; a dead A costs
   at most two api_timeouts;
2. resume (and suspend) the B-only pool without a single request to A, as fast as with A healthy;
3. suspend and resume-fail `both` nodes without putting any node DOWN: B's servers are deleted,
   and what A could not be asked to delete is remembered as pending (under every fault but the
   two that let A answer now and then, 5xx and 429, whose retries would cost 10-20 s a run);
4. once A is back, `elastic reconcile --apply` carries the pending deletes out, and a suspend of
   everything leaves no server of ours on either cloud.

The emulator's faults are used as they are; only the timing of one (latency, in the lost-create
test) is chosen by watching the emulator's request log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hostlist
import pytest

from elastic.config import META_CLUSTER, META_NODE, META_POOL
from elastic.lab.cloud import LabCloud

from tests.support.programs import REPO, Site, config_text, make_site

pytestmark = pytest.mark.integration

A, B = "east", "west"
API_TIMEOUT = 3
PROBE_TIMEOUT = 1
BOOT_TIMEOUT = 30
IMAGE = "debian-12"
PASSWORD = "pw-5d1e-not-in-logs"
FLAVORS = [{"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20}]
QUOTAS = {"instances": 100, "cores": 400, "ram": 1024000, "floating_ips": 50}
BOTH = [f"both-{i}" for i in range(1, 5)]
BONLY = ["bonly-1", "bonly-2"]
EVERY_NODE = "both-[1-4],bonly-[1-2]"

POOLS = """\
both:
  nodes: both-[1-4]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: east, network: private}
    - {cloud: west, network: private}
bonly:
  nodes: bonly-[1-2]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: west, network: private}
"""


def lab_cloud(cidr: str, **overrides) -> dict:
    cloud = {
        "boot_seconds": 0.1, "delete_seconds": 0.05, "flavors": FLAVORS, "images": [{"name": IMAGE}],
        "networks": [{"name": "private", "cidr": cidr}],
        "quotas": dict(QUOTAS),
        "auth": {"username": "demo", "password": PASSWORD, "project_name": "demo",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
    }
    cloud.update(overrides)
    return cloud


def two_clouds() -> LabCloud:
    """A and B with distinct address ranges, so an address also says which cloud it is on."""
    return LabCloud({"clouds": {A: lab_cloud("127.10.0.0/16"), B: lab_cloud("127.11.0.0/16")}})


# ---- the faults of A ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    id: str
    apply: Callable[[LabCloud], None]
    restore: Callable[[LabCloud], None]
    dead: bool = False  # A gives no usable answer at all: nothing can be listed or deleted there
    flaky: bool = False  # A still answers some requests: a node may legitimately boot there

    def __str__(self) -> str:
        return self.id


def _restore_quota(lab: LabCloud) -> None:
    lab.clear_faults(A)
    lab.set_quota(A, **QUOTAS)


FAULTS = [
    Fault("refused-reset", lambda lab: lab.set_faults(A, outage="reset"), lambda lab: lab.clear_faults(A), dead=True),
    Fault("black-hole", lambda lab: lab.set_faults(A, outage="blackhole"), lambda lab: lab.clear_faults(A), dead=True),
    Fault("auth-401", lambda lab: lab.expire_credentials(A), lambda lab: lab.restore_credentials(A), dead=True),
    Fault("image-missing", lambda lab: lab.remove_image(A, IMAGE), lambda lab: lab.add_image(A, IMAGE)),
    Fault("quota-403", lambda lab: lab.set_quota(A, instances=0), _restore_quota),
    Fault("quota-413-legacy", lambda lab: (lab.set_faults(A, quota_status=413), lab.set_quota(A, instances=0)),
          _restore_quota),
    Fault("no-valid-host", lambda lab: lab.set_faults(A, no_valid_host_flavors=["m1.small"]),
          lambda lab: lab.clear_faults(A)),
    Fault("5xx-half", lambda lab: lab.set_faults(A, error_rate=0.5, seed=20260), lambda lab: lab.clear_faults(A),
          flaky=True),
    Fault("429-storm", lambda lab: lab.set_faults(A, rate_limit_per_second=2), lambda lab: lab.clear_faults(A),
          flaky=True),
]


# ---- the site ----------------------------------------------------------------------------------

# The programs' recording scontrol (programs.write_scontrol_recorder), which also answers
# `scontrol -a -o show node` once show-node.txt exists: reconcile reads Slurm's node states.
SCONTROL = """\
#!{python}
import json, os, sys
with open({record!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[-2:] == ["show", "node"] and os.path.exists({shown!r}):
    with open({shown!r}) as handle:
        sys.stdout.write(handle.read())
"""


def make_two_cloud_site(root: Path, lab: LabCloud) -> Site:
    site = make_site(root)
    script = site.root / "scontrol"
    script.write_text(SCONTROL.format(python=sys.executable, record=str(site.record),
                                      shown=str(site.root / "show-node.txt")))
    script.chmod(0o755)
    clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
    options = {"probe_timeout": PROBE_TIMEOUT}
    text = config_text(site, clouds_yaml, clouds={A: options, B: options}, pools=POOLS, boot_timeout=BOOT_TIMEOUT)
    # config_text writes its own api_timeout (10) for every cloud; a second one would be a duplicate key.
    assert text.count("api_timeout: 10") == 2
    site.write_config(text.replace("api_timeout: 10", f"api_timeout: {API_TIMEOUT}"))
    return site


def slurm_shows(site: Site, states: dict[str, str]) -> None:
    """What `scontrol -a -o show node` prints from now on: name -> State."""
    (site.root / "show-node.txt").write_text("".join(
        f"NodeName={n} NodeAddr={n} NodeHostName={n} State={s} Partitions=cloud\n" for n, s in states.items()))


def timed_run(site: Site, program: str, nodes: str) -> tuple[int, float]:
    started = time.monotonic()
    result = site.run(program, nodes, timeout=240)
    return result.returncode, time.monotonic() - started


def run_together(site: Site, *runs: tuple[str, str]) -> list[int]:
    """Run programs at once, as slurmctld does for a suspend and a resume-fail; their exit codes."""
    codes: list[int | None] = [None] * len(runs)

    def one(index: int, program: str, nodes: str) -> None:
        codes[index] = site.run(program, nodes, timeout=240).returncode

    threads = [threading.Thread(target=one, args=(i, *run)) for i, run in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return codes  # type: ignore[return-value]


def reconcile_apply(site: Site) -> subprocess.CompletedProcess:
    """`elastic reconcile --apply`, as its timer runs it: its own process, SLURM_CONF set."""
    return subprocess.run([sys.executable, "-m", "elastic.cli", "reconcile", "--apply",
                           "--config", str(site.root / "elastic.yaml")],
                          env={"SLURM_CONF": str(site.slurm_conf), "PATH": os.defpath}, cwd=str(REPO),
                          capture_output=True, text=True, timeout=240)


# ---- what the clouds and Slurm were told -------------------------------------------------------


def live(lab: LabCloud, cloud: str) -> list[dict]:
    """Our servers on a cloud that are not being deleted."""
    return [s for s in lab.servers(cloud)
            if s["task_state"] != "deleting" and s["metadata"].get(META_CLUSTER) == "itest"]


def names(servers: list[dict]) -> list[str]:
    return sorted(s["name"] for s in servers)


def requests_to(lab: LabCloud, cloud: str) -> int:
    return sum(lab.request_counts(cloud).values())


def state_updates(calls: list[list[str]]) -> dict[str, tuple[str, str | None]]:
    states = {}
    for call in calls:
        args = dict(a.split("=", 1) for a in call[1:] if "=" in a)
        if call[:1] == ["update"] and "state" in args:
            for node in hostlist.expand_hostlist(args["nodename"]):
                states[node] = (args["state"], args.get("reason"))
    return states


def addresses_sent(calls: list[list[str]]) -> dict[str, list[str]]:
    """node -> every address Slurm was given for it (in call order)."""
    sent: dict[str, list[str]] = {}
    for call in calls:
        args = dict(a.split("=", 1) for a in call[1:] if "=" in a)
        if call[:1] == ["update"] and "nodeaddr" in args:
            for node, addr in zip(args["nodename"].split(","), args["nodeaddr"].split(","), strict=True):
                sent.setdefault(node, []).append(addr)
    return sent


def pending(site: Site) -> dict[str, dict]:
    path = site.root / "state" / "history.json"
    return json.loads(path.read_text()).get("pending", {}) if path.exists() else {}


def ours(node: str, pool: str) -> dict[str, str]:
    return {META_CLUSTER: "itest", META_NODE: node, META_POOL: pool}


def wait_for(probe: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def story(site: Site, since: int = 0, last: int = 60) -> str:
    """The log events (one line each, trimmed) for an assertion message."""
    lines = [json.dumps({k: v for k, v in e.items() if k not in ("timestamp",)})[:400]
             for e in site.log_events()[since:]]
    return "\n" + "\n".join(lines[-last:])


# ---- the matrix --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_fault_on_one_cloud_stays_on_that_cloud(tmp_path, fault):
    """A faulted: all nodes served from B, B-only runs never ask A, A's deletes wait, and A's return cleans up."""
    with two_clouds() as lab:
        site = make_two_cloud_site(tmp_path / "site", lab)

        # A healthy: how long the B-only pool takes here (start-up, creates, boot, addresses).
        code, healthy = timed_run(site, "resume", "bonly-[1-2]")
        assert code == 0, story(site)
        assert names(live(lab, B)) == BONLY and live(lab, A) == []

        fault.apply(lab)

        # 2. The B-only pool with A faulted: not one request to A, and no slower than with A healthy.
        before, events = requests_to(lab, A), len(site.log_events())
        assert timed_run(site, "suspend", "bonly-[1-2]")[0] == 0, story(site, events)
        assert live(lab, B) == []
        assert requests_to(lab, A) == before, lab.requests(A)[-10:]
        code, faulted = timed_run(site, "resume", "bonly-[1-2]")
        assert code == 0, story(site, events)
        assert requests_to(lab, A) == before, lab.requests(A)[-10:]
        # Not one request to A is the proof. The time bound only catches gross waits (several
        # api_timeouts); it leaves room for a loaded machine, where 1.5x + 1 s failed 2 runs in ~10.
        assert faulted < 2 * healthy + 2, f"{fault}: B-only resume took {faulted:.2f}s, {healthy:.2f}s with A healthy"
        bonly_servers = {s["name"]: s["id"] for s in live(lab, B)}
        assert sorted(bonly_servers) == BONLY

        # 1. Every node, A faulted: all served, each by one server, nothing reported to Slurm.
        mark, events = len(site.calls()), len(site.log_events())
        code, took = timed_run(site, "resume", EVERY_NODE)
        assert code == 0, f"{fault}: resume exit {code}" + story(site, events)
        on_a, on_b = live(lab, A), live(lab, B)
        servers = {s["name"]: s for s in on_a + on_b}
        for node in BOTH + BONLY:
            assert len([s for s in on_a + on_b if s["name"] == node]) == 1, (node, names(on_a), names(on_b))
        assert {n: servers[n]["id"] for n in BONLY} == bonly_servers  # adopted on B, untouched
        if not fault.flaky:
            assert names(on_b) == sorted(BOTH + BONLY) and on_a == [], (names(on_a), names(on_b))
        calls = site.calls()[mark:]
        assert state_updates(calls) == {}, calls
        sent = addresses_sent(calls)
        assert set(sent) == set(BOTH + BONLY), calls
        for node, addrs in sent.items():
            server_addrs = {a["addr"] for nets in servers[node]["addresses"].values() for a in nets}
            assert addrs[-1] in server_addrs, (node, addrs, servers[node]["addresses"])
        if fault.dead:
            assert took < 2 * API_TIMEOUT + healthy, f"{fault}: resume took {took:.2f}s" + story(site, events)

        # 3. suspend both-[1-2] and resume-fail both-[3-4] at once, A still faulted. Not for the
        # faults that let A answer now and then: each run would only spend 10-20 s in retries.
        if fault.flaky:
            fault.restore(lab)
        seeded = None
        if fault.dead:
            # A server of both-1 that A holds but cannot show (its create's reply was lost, say).
            seeded = lab.seed_server(A, "both-1", metadata=ours("both-1", "both"), status="ACTIVE")
        mark, events = len(site.calls()), len(site.log_events())
        codes = run_together(site, ("suspend", "both-[1-2]"), ("resume-fail", "both-[3-4]"))
        assert codes == [0, 0], f"{fault}: suspend/resume-fail exits {codes}" + story(site, events)
        states = state_updates(site.calls()[mark:])
        assert states == {"both-3": ("resume", None), "both-4": ("resume", None)}, states
        assert names(live(lab, B)) == BONLY
        if fault.dead:
            assert [s["id"] for s in live(lab, A)] == [seeded]
            waiting = pending(site)
            assert {node: sorted(clouds) for node, clouds in waiting.items()} == {n: [A] for n in BOTH}, waiting
        else:
            assert live(lab, A) == []
            assert pending(site) == {}  # A answered: nothing was deferred

        # 4. A is back: reconcile carries out the pending deletes; then a suspend of everything.
        fault.restore(lab)
        slurm_shows(site, {**{n: "IDLE+CLOUD+POWERED_DOWN" for n in BOTH}, **{n: "IDLE+CLOUD" for n in BONLY}})
        mark, events = len(site.calls()), len(site.log_events())
        done = reconcile_apply(site)
        assert done.returncode == 0, done.stdout + done.stderr + story(site, events)
        assert live(lab, A) == [], done.stdout
        assert pending(site) == {}, done.stdout
        assert names(live(lab, B)) == BONLY, done.stdout
        if seeded is not None:
            deleted = [e for e in site.log_events()[events:] if e["event"] == "cloud.delete" and e.get("ok")]
            assert [(e["server"], e["why"]) for e in deleted] == [(seeded, "reconcile")], deleted
        code, _ = timed_run(site, "suspend", EVERY_NODE)
        assert code == 0, story(site, events)
        assert live(lab, A) == [] and live(lab, B) == []
        assert state_updates(site.calls()[mark:]) == {}
        assert PASSWORD not in site.log_file.read_text()


# ---- a create whose reply never comes ----------------------------------------------------------


# The answers that end the look-ups before a create: flavor, image and network by name. They run
# at once (OpenStackCloud.resolve_boot), so any of them may come last.
RESOLVED_BY = frozenset({"GET /flavors/detail", "GET /image/v2/images", "GET /network/v2.0/networks"})


def slow_after_resolve(lab: LabCloud, cloud: str, latency: float) -> threading.Event:
    """Give `cloud` `latency` seconds of latency once it has answered the resume's last look-up
    before its creates: the creates then reach Nova, are carried out after `latency`, and their
    replies come too late. Set from the request log's records of those look-ups, each written
    before its reply leaves, so no create can come first."""
    done = threading.Event()
    add = lab.log.add
    answered: set[str] = set()

    def watching(record: dict) -> None:
        add(record)
        if done.is_set() or record["cloud"] != cloud or record["status"] != 200:
            return
        if record["endpoint"] in RESOLVED_BY:
            answered.add(record["endpoint"])
        if answered == RESOLVED_BY:
            lab.set_faults(cloud, latency_seconds=latency)
            done.set()

    lab.log.add = watching  # type: ignore[method-assign]
    return done


def test_create_without_answer_on_a_is_deleted_once_a_answers(tmp_path):
    """Creates on A that time out yet are carried out: nodes boot on B, reconcile deletes A's servers once A answers."""
    with two_clouds() as lab:
        site = make_two_cloud_site(tmp_path / "site", lab)
        slowed = slow_after_resolve(lab, A, latency=API_TIMEOUT + 2)
        mark = len(site.calls())
        code, took = timed_run(site, "resume", "both-[1-4]")
        assert slowed.is_set(), lab.requests(A)
        assert code == 0, story(site)
        assert names(live(lab, B)) == BOTH
        assert state_updates(site.calls()[mark:]) == {}
        assert set(addresses_sent(site.calls()[mark:])) == set(BOTH)
        assert took < 2 * API_TIMEOUT + 10, f"resume took {took:.2f}s" + story(site)
        waiting = pending(site)
        assert {n: sorted(c) for n, c in waiting.items()} == {n: [A] for n in BOTH}, waiting

        # The requests were not lost, their replies were: A made the servers after all.
        made = wait_for(lambda: len(live(lab, A)) == len(BOTH), timeout=API_TIMEOUT + 10)
        assert made, names(live(lab, A))

        late = sorted(s["id"] for s in live(lab, A))
        lab.clear_faults(A)
        slurm_shows(site, {n: "IDLE+CLOUD" for n in BOTH})
        events = len(site.log_events())
        done = reconcile_apply(site)
        assert done.returncode == 0, done.stdout + done.stderr + story(site, events)
        deleted = [e for e in site.log_events()[events:] if e["event"] == "cloud.delete" and e.get("ok")]
        assert sorted((e["server"], e["cloud"], e["why"]) for e in deleted) == [(i, A, "reconcile") for i in late]
        assert live(lab, A) == [], done.stdout
        assert names(live(lab, B)) == BOTH, done.stdout
        assert pending(site) == {}, done.stdout
        assert state_updates(site.calls()[mark:]) == {}

        assert site.run("suspend", "both-[1-4]", timeout=240).returncode == 0, story(site, events)
        assert live(lab, A) == [] and live(lab, B) == []

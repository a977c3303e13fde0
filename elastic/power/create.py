"""Creating one pool's servers on one cloud, and what one resume run carries across its rounds.

Shared by the resume flow (power/resume.py) and its job-aware placement (power/resume_jobs.py):
the create itself (bounded parallelism, retries that look before resending, pending deletes for
creates whose answer was lost), the pool's cloud order with cool-downs, the `max_nodes` room.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from elastic import userdata
from elastic.cloud import ERROR, BootRequest, BootTarget, Cloud, Flavor, Limits, Server, ServerGroup
from elastic.config import META_CLUSTER, META_NODE, META_POOL, Pool, PoolCloud
from elastic.errors import FALLBACK_KINDS, PERMANENT_KINDS, CloudError, CloudErrorKind, ConfigError
from elastic.fleet import Fleet
from elastic.history import Problem
from elastic.power import placement
from elastic.power.job_placement import JobNodes
from elastic.power.outcome import Failure, failure_from
from elastic.power.services import Services
from elastic.retry import with_retries


@dataclass
class Booting:
    server: Server
    pool: str
    entry: PoolCloud | None
    created_here: bool = False  # `server.created` is our clock's, not the cloud's


@dataclass
class RunState:
    """State carried across rounds of one resume run."""

    tried: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # node -> clouds
    failures: dict[str, dict[str, Failure]] = field(default_factory=lambda: defaultdict(dict))  # node -> cloud ->
    served_pools: set[tuple[str, str]] = field(default_factory=set)  # (cloud, pool) that served a node
    boot_seen: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # cloud -> seconds
    job_of: dict[str, JobNodes] = field(default_factory=dict)  # node -> the job that asked for it
    where: dict[str, Server] = field(default_factory=dict)  # node -> its server booting or served in this run
    # One quota read per cloud per run (None: it failed), then kept current with this run's creates.
    limits: dict[str, Limits | None] = field(default_factory=dict)
    flavors: dict[tuple[str, str], Flavor | None] = field(default_factory=dict)
    groups: dict[str, dict[str, ServerGroup]] = field(default_factory=dict)  # cloud -> name -> our group
    released: set[str] = field(default_factory=set)  # all_or_nothing jobs already released
    started: float = 0.0  # when the run started: a suspend of a node after this cancels it

    def note(self, node: str, cloud: str, failure: Failure) -> None:
        self.tried[node].add(cloud)
        self.failures[node].pop(cloud, None)
        self.failures[node][cloud] = failure  # last tried last

    def verdict(self, node: str, default: Failure) -> Failure:
        """The node's failure across every cloud it tried: the last cloud's kind, the others named
        too; permanent (DOWN) only when every cloud failed permanently."""
        failures = self.failures.get(node)
        if not failures:
            return default
        *others, last = failures.values()
        if not others:
            return last
        also = "; ".join(f"{f.kind} on {cloud}" for cloud, f in list(failures.items())[:-1])
        return Failure(last.kind, f"{last.message} (also {also})",
                       permanent=all(f.permanent for f in failures.values()))


def cloud_order(pool_name: str, svc: Services) -> list[PoolCloud]:
    """The pool's clouds in its order; clouds that refused this pool lately (quota, capacity, a
    permanent error) or did not answer are tried last, for the cloud's cooldown."""
    pool = svc.config.pools[pool_name]
    now = svc.clock()
    problems = svc.history.problems()
    down = svc.history.clouds_down()
    later = [e.cloud for e in pool.clouds
             if svc.history.cooling_down(e.cloud, pool_name, now, svc.config.clouds[e.cloud].cooldown)
             or now - _problem_at(problems, e.cloud, pool_name) < svc.config.clouds[e.cloud].cooldown
             or e.cloud in down]
    return placement.cloud_order(pool, later)


def room_on(entry: PoolCloud, pool_name: str, fleet: Fleet, svc: Services) -> int | None:
    """How many more of the pool's servers fit under entry.max_nodes (None: no cap).

    Counts every live server of the pool on that cloud, not only those of the nodes at hand: an
    earlier resume's servers count too. A cloud we cannot list gets no room.
    """
    if entry.max_nodes is None:
        return None
    cloud = fleet.clouds[entry.cloud]
    try:
        servers = with_retries(lambda: cloud.list_servers(svc.config.cluster), sleep=svc.sleep)
    except CloudError as error:
        svc.log.warning("resume.list_failed", cloud=entry.cloud, kind=error.kind.value, error=str(error))
        return 0
    live = sum(1 for s in servers if s.pool == pool_name and not s.deleting and s.status != ERROR)
    return placement.room_on(entry, live)


def count_on(booting: dict[str, Booting], cloud: str) -> int:
    return sum(1 for b in booting.values() if b.server.cloud == cloud)


def create_on_cloud(pool_name: str, pool: Pool, entry: PoolCloud, nodes: list[str], fleet: Fleet,
                    svc: Services, deadline: float, server_groups: Mapping[str, str] | None = None,
                    ) -> tuple[dict[str, Booting], dict[str, Failure]]:
    """Create the nodes' servers on one cloud; a failure here sends a node to the pool's next cloud."""
    if not nodes:
        return {}, {}
    cloud = fleet.clouds[entry.cloud]
    try:
        target = with_retries(lambda: cloud.resolve_boot(pool.flavor_on(entry), pool.image_on(entry), entry.network),
                              sleep=svc.sleep, give_up_at=deadline, clock=svc.clock)
    except CloudError as error:
        svc.log.error("resume.resolve_failed", cloud=entry.cloud, pool=pool_name, kind=error.kind.value,
                      error=str(error))
        remember_problem(error, entry.cloud, pool_name, svc)
        return {}, {node: failure_from(error) for node in nodes}
    try:
        requests = {node: _boot_request(node, pool_name, pool, entry, target, svc,
                                        (server_groups or {}).get(node)) for node in nodes}
    except ConfigError as error:
        # The template's file:line only: a message could quote a user_data_vars value (a secret).
        return {}, {node: Failure("config", f"user-data template {error.where}", permanent=True) for node in nodes}

    refresh = _Refresh(target, lambda: cloud.resolve_boot(pool.flavor_on(entry), pool.image_on(entry), entry.network,
                                                          fresh=True))

    def send(node: str, used: BootTarget) -> Server:
        request = replace(requests[node], flavor_id=used.flavor_id, image_id=used.image_id,
                          network_id=used.network_id)
        return with_retries(
            lambda: cloud.create_server(request), sleep=svc.sleep,
            # A lost reply may hide a create that worked: look before sending it again.
            before_retry=lambda: _find_live(cloud, node, svc),
            on_retry=lambda err, delay: svc.log.warning("cloud.retry", cloud=entry.cloud, node=node,
                                                        kind=err.kind.value, delay=delay),
            give_up_at=deadline, clock=svc.clock,
        )

    def create(node: str) -> tuple[str, Server | CloudError | None]:
        if svc.clock() >= deadline:
            return node, None  # no create starts after the boot deadline
        started = svc.monotonic()
        used = refresh.current
        try:
            try:
                server = send(node, used)
            except CloudError as error:
                # An id an earlier run looked up is gone (an image replaced under its name):
                # look the names up again, once for all the creates, and send this one again.
                renewed = refresh.after(error, used, svc, entry.cloud)
                if renewed is None:
                    raise
                server = send(node, renewed)
        except CloudError as error:
            svc.log.warning("cloud.create", cloud=entry.cloud, node=node, ok=False, kind=error.kind.value,
                            error=str(error), seconds=round(svc.monotonic() - started, 3))
            return node, error
        svc.log.info("cloud.create", cloud=entry.cloud, node=node, ok=True, server=server.id,
                     seconds=round(svc.monotonic() - started, 3))
        return node, server

    workers = min(svc.config.clouds[entry.cloud].max_parallel, len(nodes))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"create-{entry.cloud}") as pool_exec:
        results = list(pool_exec.map(create, nodes))
    started: dict[str, Booting] = {}
    failed: dict[str, Failure] = {}
    unanswered: dict[str, dict[str, str]] = {}
    for node, result in results:
        if isinstance(result, Server):
            started[node] = Booting(result, pool_name, entry, created_here=True)
        elif isinstance(result, CloudError):
            failed[node] = failure_from(result)
            if result.kind in FALLBACK_KINDS:
                svc.history.record_cloud_failure(entry.cloud, pool_name, result.kind.value, svc.clock())
            remember_problem(result, entry.cloud, pool_name, svc)
            if result.kind in CREATE_MAY_HAVE_HAPPENED:
                # The last create may have reached Nova before its reply was lost: whatever it made
                # is deleted by a later run (or reconcile) once the cloud answers.
                unanswered[node] = {entry.cloud: f"create unconfirmed: {result.message}"}
    svc.history.add_pending_deletes(unanswered, svc.clock())
    return started, failed


class _Refresh:
    """The ids one cloud's creates use, looked up again (once, whichever create thread meets it
    first) when the cloud refuses a cached one as not found."""

    def __init__(self, target: BootTarget, lookup: Callable[[], BootTarget]):
        self.current = target
        self._lookup = lookup
        self._lock = threading.Lock()
        self._done = False

    def after(self, error: CloudError, used: BootTarget, svc: Services, cloud: str) -> BootTarget | None:
        """The ids to send again with after `error`, or None (the error stands)."""
        if error.resource is None or error.resource[0] not in ("flavor", "image", "network"):
            return None
        with self._lock:
            if self.current is not used:
                return self.current  # another create's refusal renewed them already
            if self._done or not used.cached:
                return None  # ids this run looked up itself: the cloud's answer stands
            self._done = True
            try:
                renewed = with_retries(self._lookup, sleep=svc.sleep)
            except CloudError as failed:
                svc.log.warning("resume.lookup_renewal_failed", cloud=cloud, kind=failed.kind.value, error=str(failed))
                return None
            svc.log.info("resume.lookup_renewed", cloud=cloud, stale=error.resource[0], old=error.resource[1])
            self.current = renewed
            same = (renewed.flavor_id, renewed.image_id, renewed.network_id) == (
                used.flavor_id, used.image_id, used.network_id)
            return None if same else renewed


# A create that ended in these may have made a server; a 429 or a 4xx was refused before that.
CREATE_MAY_HAVE_HAPPENED = frozenset({CloudErrorKind.UNREACHABLE, CloudErrorKind.TRANSIENT})


def remember_problem(error: CloudError, cloud: str, pool: str, svc: Services) -> None:
    """A permanent error is the cloud's (or the pool's on that cloud): status and check show it."""
    if error.kind in PERMANENT_KINDS:
        svc.history.record_problem(cloud, pool, error.kind.value, error.message, svc.clock())


def _problem_at(problems: Mapping[str, Mapping[str, Problem]], cloud: str, pool: str) -> float:
    """When the cloud last had a permanent error for the pool; -inf when it has none."""
    problem = problems.get(cloud, {}).get(pool)
    return problem["at"] if problem is not None else -math.inf


def _find_live(cloud: Cloud, node: str, svc: Services) -> Server | None:
    """The node's server that an unanswered create may have made. A look that fails stops the
    retries: resending blind could make a second server."""
    try:
        servers = with_retries(lambda: cloud.list_servers(svc.config.cluster, [node]), sleep=svc.sleep)
    except CloudError as error:
        raise CloudError(error.kind, f"cannot look before resending a create: {error.message}", cloud=error.cloud,
                         status=error.status, final=True, resource=error.resource) from None
    keep, _ = placement.choose_server(servers)
    return keep


def _boot_request(node: str, pool_name: str, pool: Pool, entry: PoolCloud, target: BootTarget,
                  svc: Services, server_group: str | None = None) -> BootRequest:
    config = svc.config
    metadata = {**pool.boot.metadata, META_CLUSTER: config.cluster, META_NODE: node, META_POOL: pool_name}
    encoded = None
    if pool.boot.user_data is not None:
        context = {
            **pool.boot.user_data_vars,
            "node": node, "pool": pool_name, "cluster": config.cluster, "cloud": entry.cloud,
            "controller": config.controller,
        }
        encoded = userdata.encode_user_data(userdata.render_user_data(pool.boot.user_data, context))
    return BootRequest(
        name=node, flavor_id=target.flavor_id, image_id=target.image_id, network_id=target.network_id,
        metadata=metadata, key_name=pool.boot.key_name, security_groups=pool.boot.security_groups,
        user_data=encoded, availability_zone=entry.availability_zone or pool.boot.availability_zone,
        boot_volume_size=pool.boot.boot_volume_size, server_group=server_group,
    )


def entry_for(pool: Pool, cloud: str) -> PoolCloud | None:
    return next((entry for entry in pool.clouds if entry.cloud == cloud), None)

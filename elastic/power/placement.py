"""Pure decisions about servers and clouds: which server to keep, which cloud to try next."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from elastic.cloud import ACTIVE, BUILDING, Server
from elastic.config import Pool, PoolCloud

ADOPTABLE = (ACTIVE, BUILDING)


def choose_server(servers: Iterable[Server]) -> tuple[Server | None, list[Server]]:
    """Of one node's servers (on any cloud): the one to keep, and the ones to delete.

    Adopt an ACTIVE server before a BUILD one, the newest first; every other live server of the
    node is a duplicate, and an ERROR (or stopped, or otherwise unusable) one is replaced.
    Servers already being deleted are left alone.
    """
    live = [s for s in servers if not s.deleting]
    usable = [s for s in live if s.status in ADOPTABLE]
    usable.sort(key=lambda s: (s.status == ACTIVE, s.created or 0.0), reverse=True)
    keep = usable[0] if usable else None
    return keep, [s for s in live if s is not keep]


def cloud_order(pool: Pool, cooling: Iterable[str]) -> list[PoolCloud]:
    """The pool's clouds in its order, those in cool-down after a quota or capacity failure last.

    A cooling cloud is still tried when nothing else is left: quota may have been freed since.
    """
    cooling = set(cooling)
    ready = [entry for entry in pool.clouds if entry.cloud not in cooling]
    later = [entry for entry in pool.clouds if entry.cloud in cooling]
    return ready + later


def room_on(entry: PoolCloud, live_of_pool_on_cloud: int) -> int | None:
    """How many more servers the pool may start on this cloud (None: no cap of ours)."""
    if entry.max_nodes is None:
        return None
    return max(entry.max_nodes - live_of_pool_on_cloud, 0)


def server_address(server: Server, entry: PoolCloud | None) -> str | None:
    """The address Slurm should use: the floating IP when the pool asks for one, else the fixed
    IP on the pool's network on that cloud (any fixed IP when the cloud left the pool)."""
    if entry is not None and entry.floating_ip:
        return server.floating_address()
    if entry is not None:
        found = server.fixed_address(entry.network)
        if found:
            return found
    return server.fixed_address()


def split(nodes: Sequence[str], count: int | None) -> tuple[list[str], list[str]]:
    if count is None:
        return list(nodes), []
    return list(nodes[:count]), list(nodes[count:])

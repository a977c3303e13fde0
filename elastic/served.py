"""The server each node was last served with, kept across runs in `state_dir/served.json`.

A suspend deletes that server at once, beside its look for any other server of the node, instead
of after the look: one round trip less before the wait for the server to go (power/suspend.py).

- A resume writes it once, after it has told Slurm everything, for the nodes it served: the
  server it created or adopted (a server the look found with our cluster's metadata), with the
  cluster and pool it served the node for. A node served again gets its new server in its place.
- A suspend takes its nodes' entries, removing them in the same locked write: an id is deleted by
  at most one run. Only an entry of this cluster, for the node's current pool, is used: a server
  made under another `cluster:` (or another cluster's config sharing this state dir) is not ours.
- This id is deleted without a look at the server first: that is the saving. Every other delete
  deletes only what a look found with our cluster's metadata. A server an admin wants kept after
  its node is powered down is locked (`openstack server lock`): its delete is refused, and the node
  goes DOWN, saying so.
- Mode 0600, ours only (private_files): a file someone else could have written is not used.
- Advice only: a missing, unreadable, broken or wrongly-owned file, or its lock held too long, is
  a warning, and the suspend deletes after its look as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elastic import private_files
from elastic.errors import ElasticError
from elastic.locks import exclusive_lock

LOCK_TIMEOUT = 1.0


@dataclass(frozen=True)
class Served:
    """A node's server: its cloud and id, and the pool it was served for."""

    cloud: str
    id: str
    pool: str


class ServedServers:
    """{node: Served} of one or more clusters, in `path`, guarded by `path`.lock."""

    def __init__(self, path: Path, *, warn: Callable[[str], None] = lambda message: None):
        self.path = path
        self._warn = warn

    def record(self, cluster: str, servers: Mapping[str, Served]) -> None:
        """Note `servers` ({node: Served}) of `cluster`, replacing what each node had."""
        if servers:
            self._change(lambda nodes: nodes.update({node: {"cluster": cluster, "cloud": s.cloud, "id": s.id,
                                                            "pool": s.pool} for node, s in servers.items()}))

    def take(self, cluster: str, nodes: Iterable[str]) -> dict[str, Served]:
        """The entries of `cluster` for `nodes`, removing the nodes' entries from the file."""
        taken: dict[str, Any] = {}

        def remove(entries: dict[str, Any]) -> None:
            for node in nodes:
                if node in entries:
                    taken[node] = entries.pop(node)

        self._change(remove)
        return {node: served for node, entry in taken.items() if (served := _entry(entry, cluster)) is not None}

    def _change(self, change: Callable[[dict[str, Any]], None]) -> None:
        try:
            with exclusive_lock(self.path.with_name(self.path.name + ".lock"), LOCK_TIMEOUT):
                entries = private_files.read_mapping(self.path, "nodes", "served servers", self._warn)
                before = dict(entries)
                change(entries)
                if entries != before:
                    private_files.write_mapping(self.path, "nodes", entries)
        except (OSError, ElasticError, TypeError, ValueError) as error:
            self._warn(f"served servers {self.path} not saved: {private_files.reason(error)}")


def _entry(entry: Any, cluster: str) -> Served | None:
    if not isinstance(entry, dict) or entry.get("cluster") != cluster:
        return None
    cloud, server_id, pool = (entry.get(key) for key in ("cloud", "id", "pool"))
    if not (isinstance(cloud, str) and isinstance(server_id, str) and isinstance(pool, str)
            and cloud and server_id and pool):
        return None
    return Served(cloud, server_id, pool)

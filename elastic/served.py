"""The server each node was last served with, kept across runs in `state_dir/served.json`.

A suspend deletes that server at once, beside its look for any other server of the node, instead
of after the look: one round trip less before the wait for the server to go (power/suspend.py).

- A resume writes it once, at its end, for the nodes it served; a node served again gets its new
  server in place of the old.
- An entry only ever names a server of that node, and every release of a node deletes all of its
  servers: an entry whose server a suspend already deleted costs one 404 at most, and a server the
  file does not know of is found by the look as before. Entries are therefore never removed.
- Mode 0600, ours only (private_files): an id in it is deleted without a look at the server first,
  so a file someone else could have written is not used.
- Advice only: a missing, unreadable, broken or wrongly-owned file is ignored with a warning, and
  the suspend deletes after its look as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from elastic import private_files
from elastic.errors import ElasticError
from elastic.locks import exclusive_lock

LOCK_TIMEOUT = 1.0


class ServedServers:
    """{node: {cloud: server id}}, in `path`, guarded by `path`.lock for writes."""

    def __init__(self, path: Path, *, warn: Callable[[str], None] = lambda message: None):
        self.path = path
        self._warn = warn

    def read(self) -> dict[str, dict[str, str]]:
        """Every node's last server, as earlier resumes wrote it; malformed entries are dropped."""
        return {node: ids for node, entry in self._read().items() if isinstance(entry, dict)
                and (ids := {cloud: i for cloud, i in entry.items() if isinstance(i, str) and i})}

    def record(self, servers: dict[str, dict[str, str]]) -> None:
        """`servers`: {node: {cloud: server id}}, replacing what each node had."""
        if not servers:
            return
        try:
            with exclusive_lock(self.path.with_name(self.path.name + ".lock"), LOCK_TIMEOUT):
                private_files.write_mapping(self.path, "nodes", {**self._read(), **servers})
        except (OSError, ElasticError, TypeError, ValueError) as error:
            self._warn(f"served servers {self.path} not saved: {private_files.reason(error)}")

    def _read(self) -> dict[str, object]:
        return private_files.read_mapping(self.path, "nodes", "served servers", self._warn)

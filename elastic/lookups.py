"""Names resolved to ids (flavor, image, network), remembered across runs in `state_dir/lookups.json`.

A resume resolves its pool's flavor, image and network names once per cloud before its first
create: three requests (and, for image and network, the service's version discovery) that every
run repeated although the answer rarely changes. This file keeps each answer for MAX_AGE, per
cloud and project (`scope`), so a run within that time sends none of them:

- an id the cloud refuses as not found (a create's 400 "Can not find requested image", an image
  replaced under the same name and the old one deleted) is looked up again by the flow that met
  it (power/create.py), and the new answer replaces the old one;
- an image replaced under the same name while the old one stays is picked up within MAX_AGE;
  deleting the file makes the next run look everything up again;
- mode 0600, ours only: an id in it decides what every node boots, so a file someone else could
  have written is not used;
- advice only: a missing, unreadable, broken or wrongly-owned file is ignored with a warning and
  the run looks the names up as before. Entries are read once per run and written under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from elastic import private_files
from elastic.errors import ElasticError
from elastic.locks import exclusive_lock

# An answer older than this is looked up again (an image replaced under the same name is used
# from then on).
MAX_AGE = 900.0
MODE = private_files.MODE
LOCK_TIMEOUT = 1.0
KINDS = ("flavor", "image", "network")


def fresh_entry(entry: Any, now: float, max_age: float = MAX_AGE) -> dict[str, Any] | None:
    """The stored answer if it is well-formed and younger than `max_age`, else None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
        return None
    at = entry.get("at")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not 0 <= now - at < max_age:
        return None
    return entry


class LookupCache:
    """Name -> id answers of earlier runs, by scope (one cloud and project) and (kind, name)."""

    def __init__(self, path: Path, *, clock: Callable[[], float], warn: Callable[[str], None] = lambda message: None,
                 max_age: float = MAX_AGE):
        self.path = path
        self._clock = clock
        self._warn = warn
        self._max_age = max_age
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] | None = None  # the file as this run first read it

    def get(self, scope: str, kind: str, name: str) -> dict[str, Any] | None:
        """The answer an earlier run stored for `name`, if still fresh: {"id": ..., ...}."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._read()
            entries = self._loaded.get(scope)
            entry = entries.get(_key(kind, name)) if isinstance(entries, dict) else None
        found = fresh_entry(entry, self._clock(), self._max_age)
        return {k: v for k, v in found.items() if k != "at"} if found is not None else None

    def put(self, scope: str, kind: str, name: str, answer: Mapping[str, Any]) -> None:
        """Keep `answer` (an "id" and plain JSON values) for the next runs."""
        self._update(scope, kind, name, {**answer, "at": self._clock()})

    def forget(self, scope: str, kind: str, name: str) -> None:
        """The stored id was refused: no run uses it again."""
        self._update(scope, kind, name, None)

    def _update(self, scope: str, kind: str, name: str, entry: dict[str, Any] | None) -> None:
        try:
            with exclusive_lock(self.path.with_name(self.path.name + ".lock"), LOCK_TIMEOUT):
                data = self._read()
                now = self._clock()
                # Drop what no run would use any more, so the file stays small.
                data = {s: kept for s, entries in data.items() if isinstance(entries, dict)
                        and (kept := {k: e for k, e in entries.items() if fresh_entry(e, now, self._max_age)})}
                scoped = data.setdefault(scope, {})
                if entry is None:
                    if scoped.pop(_key(kind, name), None) is None:
                        return
                    if not scoped:
                        data.pop(scope)
                else:
                    scoped[_key(kind, name)] = entry
                self._write(data)
            with self._lock:
                self._loaded = data
        except (OSError, ElasticError, TypeError, ValueError) as error:
            self._warn(f"look-up cache {self.path} not saved: {private_files.reason(error)}")

    def _read(self) -> dict[str, Any]:
        return private_files.read_mapping(self.path, "scopes", "look-up cache", self._warn)

    def _write(self, scopes: dict[str, Any]) -> None:
        private_files.write_mapping(self.path, "scopes", scopes)


def _key(kind: str, name: str) -> str:
    return f"{kind}:{name}"

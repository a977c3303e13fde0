"""JSON files in state_dir that only our user may read (mode 0600): the Keystone token cache
(tokens.py) and the look-up cache (lookups.py).

Read: one mapping under a top-level key, or {} with a warning when the file is not ours, is group
or world readable, is a symlink, is not JSON or lacks the mapping (a cache is advice: a run then
does without). Write: a new file, 0600 before anything is in it, renamed over the old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODE = 0o600


def read_mapping(path: Path, key: str, what: str, warn: Callable[[str], None]) -> dict[str, Any]:
    """The mapping under `key` in `path` ({} when there is none); `what` names the file in warnings."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as error:
        warn(f"{what} {path} ignored: {reason(error)}")
        return {}
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != os.geteuid():
            warn(f"{what} {path} ignored: it must be ours and mode 0600 (is {stat.S_IMODE(info.st_mode):04o})")
            return {}
        raw = handle.read()
    try:
        data = json.loads(raw)
    except ValueError:
        warn(f"{what} {path} ignored: not JSON")
        return {}
    mapping = data.get(key) if isinstance(data, dict) else None
    if not isinstance(mapping, dict):
        warn(f"{what} {path} ignored: no {key} mapping")
        return {}
    return mapping


def write_mapping(path: Path, key: str, mapping: dict[str, Any]) -> None:
    """Replace `path` with {"version": 1, key: mapping}, atomically; raises OSError/TypeError/ValueError."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), MODE)
            json.dump({"version": 1, key: mapping}, handle, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def reason(error: BaseException) -> str:
    """An error as a warning says it: the OS's words for an OSError, else its message."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)

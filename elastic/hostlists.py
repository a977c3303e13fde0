"""Slurm hostlists (`cpu-[001-004],gpu7`) to node names and back, with python-hostlist.

slurmctld passes the programs one argument in Slurm's compressed form, which may mix prefixes,
zero padding and partitions. Never split or expand it by hand.
"""

from __future__ import annotations

from collections.abc import Iterable

import hostlist

from elastic.errors import UsageError


def expand(text: str) -> list[str]:
    """Node names of a hostlist, in the order written, each once.

    Slurm's own hostlist parser also takes whitespace as a separator (`scontrol show hostnames
    "a b"`), so we do the same.
    """
    joined = ",".join(text.split())
    try:
        names = hostlist.expand_hostlist(joined)
    except hostlist.BadHostlist as exc:
        raise UsageError(f"bad hostlist {text!r}: {exc}") from None
    if not names:
        raise UsageError(f"empty hostlist {text!r}")
    return list(dict.fromkeys(names))


def compress(names: Iterable[str]) -> str:
    """Slurm's compressed form of node names, e.g. `cpu-[001-003],gpu7` ("" for none)."""
    return hostlist.collect_hostlist(list(dict.fromkeys(names)))

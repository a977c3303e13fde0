"""Slurm hostlists (`cpu-[001-004],gpu7`) to node names and back, with python-hostlist.

slurmctld passes the programs one argument in Slurm's compressed form, which may mix prefixes,
zero padding and partitions. Never split or expand it by hand.

The one exception is `count`: python-hostlist has no way to ask how many names a hostlist holds
without building them, and a short hostlist can name millions of nodes. `count` reads only the
bracket ranges (the same grammar python-hostlist parses), so `expand(text, limit=...)` refuses
such a hostlist before expanding it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import hostlist

from elastic.errors import UsageError

_DIGITS = re.compile(r"[0-9]+")
_RANGE = re.compile(r"([0-9]+)-([0-9]+)")
# Python refuses int() of longer digit strings; a bound that long is beyond any limit anyway.
_MAX_DIGITS = 4000


def expand(text: str, limit: int | None = None) -> list[str]:
    """Node names of a hostlist, in the order written, each once.

    Slurm's own hostlist parser also takes whitespace as a separator (`scontrol show hostnames
    "a b"`), so we do the same. With `limit`, a hostlist writing more than `limit` names is a
    UsageError raised before anything is expanded. A name that cannot be a node's (containing '/'
    or NUL, or '.' or '..': it would name a path in lock and state directories) is a UsageError.
    """
    if limit is not None:
        written = count(text)
        if written > limit:
            raise UsageError(f"hostlist {_shown(text)} names {written} nodes, more than the limit of {limit}")
    joined = ",".join(text.split())
    try:
        names = hostlist.expand_hostlist(joined)
    except hostlist.BadHostlist as exc:
        raise UsageError(f"bad hostlist {_shown(text)}: {exc}") from None
    except ValueError as exc:  # int() of a number too long for Python
        raise UsageError(f"bad hostlist {_shown(text)}: {exc}") from None
    if not names:
        raise UsageError(f"empty hostlist {_shown(text)}")
    for name in names:
        check_name(name, text)
    return list(dict.fromkeys(names))


def count(text: str) -> int:
    """How many names the hostlist writes (duplicates included), computed from its ranges without
    expanding it: the sum over its top-level parts of the product of each bracket's size.

    Equal to `len(hostlist.expand_hostlist(text, allow_duplicates=True))` wherever that succeeds
    (an upper bound on `len(expand(text))`); a malformed hostlist is a UsageError.
    """
    joined = ",".join(text.split())
    total = 0
    product = 1  # names the current top-level part writes so far
    part_started = False
    bracket: list[str] | None = None  # text inside the open bracket, if any
    for char in joined + ",":
        if bracket is not None:
            if char == "[":
                raise UsageError(f"bad hostlist {_shown(text)}: nested brackets")
            if char == "]":
                product *= _rangelist_size("".join(bracket), text)
                bracket = None
            else:
                bracket.append(char)
        elif char == ",":
            if part_started:
                total += product
            product, part_started = 1, False
        elif char == "[":
            bracket, part_started = [], True
        elif char == "]":
            raise UsageError(f"bad hostlist {_shown(text)}: unbalanced brackets")
        else:
            part_started = True
    if bracket is not None:
        raise UsageError(f"bad hostlist {_shown(text)}: unbalanced brackets")
    return total


def check_name(name: str, text: str | None = None) -> None:
    """UsageError unless `name` can be a node name (and so a file name under our directories)."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        where = f" in hostlist {_shown(text)}" if text is not None and text != name else ""
        raise UsageError(f"bad node name {name!r}{where}: a node name cannot contain '/' or NUL, "
                         "nor be '.' or '..'")


def compress(names: Iterable[str]) -> str:
    """Slurm's compressed form of node names, e.g. `cpu-[001-003],gpu7` ("" for none)."""
    compressed: str = hostlist.collect_hostlist(list(dict.fromkeys(names)))
    return compressed


def _rangelist_size(rangelist: str, text: str) -> int:
    size = 0
    for range_ in rangelist.split(","):
        if _DIGITS.fullmatch(range_):
            size += 1
            continue
        match = _RANGE.fullmatch(range_)
        if not match:
            raise UsageError(f"bad hostlist {_shown(text)}: bad range {range_!r}")
        low, high = (_number(digits, text) for digits in match.groups())
        if high < low:
            raise UsageError(f"bad hostlist {_shown(text)}: start > stop in {range_!r}")
        size += high - low + 1
    return size


def _number(digits: str, text: str) -> int:
    significant = digits.lstrip("0") or "0"
    if len(significant) > _MAX_DIGITS:
        raise UsageError(f"bad hostlist {_shown(text)}: a number of {len(significant)} digits")
    return int(significant)


def _shown(text: str, most: int = 200) -> str:
    """repr of the hostlist for a message, cut short: the message may end up in a Slurm reason."""
    return repr(text) if len(text) <= most else f"{text[:most]!r}... ({len(text)} characters)"

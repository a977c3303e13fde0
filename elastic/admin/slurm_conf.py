"""`elastic slurm-conf`: the slurm.conf include that follows from the pool YAML, and `--check`,
which compares it with what the running slurmctld has.

The text itself comes from `elastic.slurm_conf_lines`; this module compares it with `scontrol show config`
and `scontrol show node`, both of which print slurmctld's running values, not the file on disk.
Both are judged by the running version (SLURM_VERSION): the block that version needs, and the
options that are defunct there (to be removed).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from elastic import hostlists, slurm_conf_lines
from elastic.admin.table import format_table
from elastic.config import Config
from elastic.slurm import version_of_config, version_text

PROGRAM_NAMES = {"resume": "elastic-resume", "suspend": "elastic-suspend", "resume_fail": "elastic-resume-fail"}
# Settings whose running value is a comma list to which a site may add its own items.
_LIST_SETTINGS = frozenset({"SlurmctldParameters", "CommunicationParameters", "PrivateData"})
_PROGRAM_SETTINGS = frozenset({"ResumeProgram", "SuspendProgram", "ResumeFailProgram"})


@dataclass(frozen=True)
class Difference:
    subject: str  # a setting ("ResumeTimeout") or nodes ("cpu-[001-004]: CPUs")
    want: str  # what the YAML gives, or "remove X (defunct from 23.11)"
    have: str  # what slurmctld runs with


def default_programs(directory: Path | None = None) -> slurm_conf_lines.Programs:
    """The console scripts installed beside this Python (their shebang names it: slurmctld gives
    the programs no PATH), or in `directory`."""
    base = Path(directory) if directory is not None else Path(sys.executable).parent
    return slurm_conf_lines.Programs(**{key: base / name for key, name in PROGRAM_NAMES.items()})


def missing_programs(programs: slurm_conf_lines.Programs) -> list[Path]:
    return [path for path in (programs.resume, programs.suspend, programs.resume_fail) if not path.is_file()]


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one rename, so slurmctld never reads half a file; mode 0644."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# ---- comparing with the running slurmctld ------------------------------------------------------


def slurm_version(running: Mapping[str, str]) -> tuple[int, int, int]:
    """The running slurmctld's version (SLURM_VERSION = 24.11.5 is (24, 11, 5)); a SlurmError when
    `scontrol show config` shows none or not a version."""
    return version_of_config(running)


def number(value: str | None) -> int | None:
    """The number in `600 sec`, `0 nodes/min`, `65533`; None for NONE, INFINITE, (null) or absent."""
    match = re.match(r"\s*(-?\d+)", value or "")
    if not match:
        return None
    result = int(match.group(1))
    return None if result < 0 else result


def items(value: str | None) -> set[str]:
    if not value or value.strip() in ("(null)", "none", "NONE"):
        return set()
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def power_save_differences(config: Config, programs: slurm_conf_lines.Programs, running: Mapping[str, str], *,
                           suspend_time: int = 600,
                           version: slurm_conf_lines.Version | None = None) -> list[Difference]:
    """Settings of the power-save block for the running version that slurmctld does not run with,
    then the options it runs with that are defunct at that version ("remove ...").

    List settings need only contain our items; numbers are compared as numbers (scontrol prints
    `600 sec`); program paths must be equal. `version` defaults to the running SLURM_VERSION.
    """
    if version is None:
        version = slurm_version(running)
    differences = []
    for line in slurm_conf_lines.power_save_lines(config, programs, suspend_time=suspend_time, version=version):
        key, want = line.split("=", 1)
        have = running.get(key)
        if key in _LIST_SETTINGS:
            ok = items(want) <= items(have)
        elif key in _PROGRAM_SETTINGS:
            ok = have == want
        else:
            ok = number(have) == number(want)
        if not ok:
            differences.append(Difference(key, want, have if have is not None else "(not shown)"))
    for entry in slurm_conf_lines.defunct(version):
        if entry.item.lower() in items(running.get(entry.key)):
            differences.append(Difference(entry.key, f"remove {entry.item} (defunct from {version_text(entry.until)})",
                                          running.get(entry.key, "")))
    return differences


def node_differences(config: Config, running_nodes: Mapping[str, Mapping[str, str]], *,
                     version: slurm_conf_lines.Version = slurm_conf_lines.DEFAULT_VERSION) -> list[Difference]:
    """Where slurmctld's nodes differ from the pools: per attribute, nodes grouped into hostlists."""
    found: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    # Before 23.02 a powered-down CLOUD node is hidden unless PrivateData=cloud; from 23.02 always shown.
    unseen = ("not shown (not in slurm.conf, or hidden: PrivateData=cloud)" if tuple(version) < (23, 2)
              else "not shown (not in slurm.conf)")

    def differ(node: str, what: str, want: object, have: object) -> None:
        found[(what, str(want), str(have))].append(node)

    for pool in config.pools.values():
        s = pool.slurm
        for node in pool.node_names:
            fields = running_nodes.get(node)
            if fields is None:
                differ(node, "node", "CLOUD node", unseen)
                continue
            if "CLOUD" not in fields.get("State", "").split("+"):
                differ(node, "State", "CLOUD", fields.get("State", "?"))
            if fields.get("CPUTot") != str(s.cpus):
                differ(node, "CPUs", s.cpus, fields.get("CPUTot", "?"))
            if fields.get("RealMemory") != str(s.real_memory):
                differ(node, "RealMemory", s.real_memory, fields.get("RealMemory", "?"))
            have_features = items(fields.get("AvailableFeatures"))
            if have_features != {f.lower() for f in s.features}:
                differ(node, "Feature", ",".join(s.features) or "(none)", ",".join(sorted(have_features)) or "(none)")
            if pool.partition and pool.partition not in (fields.get("Partitions") or "").split(","):
                differ(node, "Partitions", pool.partition, fields.get("Partitions") or "(none)")
    for node, fields in running_nodes.items():
        if "CLOUD" in fields.get("State", "").split("+") and config.pool_of(node) is None:
            differ(node, "node", "(in no pool)", "CLOUD node in slurm.conf")
    return [Difference(f"{hostlists.compress(nodes)}: {what}", want, have)
            for (what, want, have), nodes in found.items()]


def render_differences(differences: list[Difference]) -> str:
    return format_table(["SETTING", "WANTED", "SLURMCTLD HAS"], [[d.subject, d.want, d.have] for d in differences])

"""The slurm.conf lines that follow from the pool YAML: nodes, partitions, the power-save block.

Pure text generation; `elastic slurm-conf` prints or writes it, the lab's Slurm launcher uses it.
The power-save block depends on the Slurm version (`VERSIONED`); without one it is 22.05's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from elastic import hostlists
from elastic.config import Config, Pool

# slurmd starts after cloud-init on a real VM; this much on top of our own boot wait.
SLURMD_START_MARGIN = 300
# Deleting is asynchronous in Nova; slurmctld must not call a node down before we return.
SUSPEND_MARGIN = 30


Version = tuple[int, ...]  # (major, minor[, micro]), compared as tuples: (23, 2) < (23, 11)
DEFAULT_VERSION: Version = (22, 5)


@dataclass(frozen=True)
class Versioned:
    """A setting power saving on cloud nodes needs before `until`, and no longer from then."""

    key: str
    item: str  # the value, or the item of a comma list
    until: Version
    defunct: bool  # from `until` the item does nothing and belongs out of slurm.conf
    why: str  # what `until` changed, for check rows and --check


# Read in Slurm's RELEASE_NOTES and source at the tags slurm-23-02-0-1 and slurm-23-11-0-1.
VERSIONED = (
    # 23.11: "Remove NoAddrCache CommunicationParameter."; slurmctld logs it as defunct.
    Versioned("CommunicationParameters", "NoAddrCache", (23, 11), True,
              "removed in 23.11: slurmctld logs it as defunct"),
    # 22.05 hides powered-down CLOUD nodes from sinfo/scontrol without it. 23.02: "Change cloud nodes
    # to show by default. PrivateData=cloud is no longer needed."; read_config.c no longer parses the
    # flag, so it is dropped without a word and `scontrol show config` never shows it.
    Versioned("PrivateData", "cloud", (23, 2), True,
              "from 23.02 CLOUD nodes are always shown and the flag is ignored"),
    # 23.11: "Remove cloud_reg_addrs and make it default behavior. Slurm will automatically manage
    # NodeHostName and NodeAddr for cloud nodes."; slurmctld logs the option as defunct.
    Versioned("SlurmctldParameters", "cloud_reg_addrs", (23, 11), True,
              "the behaviour from 23.11 (every registration sets NodeAddr): slurmctld logs the option as defunct"),
    # 22.05 and 23.02 cannot fan messages out through cloud nodes they have no address for; 23.11:
    # "Enable fanout for dynamic and unaddresable cloud nodes". Still a valid value, so not defunct.
    Versioned("TreeWidth", "65533", (23, 11), False,
              "from 23.11 Slurm fans out around unaddressed cloud nodes: Slurm's default (16) will do"),
)


def needed(version: Version, key: str) -> bool:
    """Whether the block for `version` carries the VERSIONED setting `key`."""
    return all(tuple(version) < v.until for v in VERSIONED if v.key == key)


def defunct(version: Version) -> list[Versioned]:
    """The VERSIONED items that do nothing at `version` and belong out of slurm.conf."""
    return [v for v in VERSIONED if v.defunct and tuple(version) >= v.until]


@dataclass(frozen=True)
class Programs:
    resume: Path
    suspend: Path
    resume_fail: Path


def node_line(pool: Pool) -> str:
    s = pool.slurm
    parts = [f"NodeName={pool.nodes}", f"CPUs={s.cpus}", f"RealMemory={s.real_memory}"]
    for key, value in (("Sockets", s.sockets), ("CoresPerSocket", s.cores_per_socket),
                       ("ThreadsPerCore", s.threads_per_core), ("Weight", s.weight)):
        if value is not None:
            parts.append(f"{key}={value}")
    if s.features:
        parts.append(f"Feature={','.join(s.features)}")
    if s.gres:
        parts.append(f"Gres={s.gres}")
    parts.append("State=CLOUD")
    return " ".join(parts)


def node_lines(config: Config) -> list[str]:
    return [node_line(pool) for pool in config.pools.values()]


def partition_lines(config: Config, *, default: str | None = None) -> list[str]:
    members: dict[str, list[str]] = defaultdict(list)
    for pool in config.pools.values():
        if pool.partition:
            members[pool.partition].extend(pool.node_names)
    lines = []
    for name, nodes in members.items():
        extra = " Default=YES" if name == default else ""
        lines.append(f"PartitionName={name} Nodes={hostlists.compress(nodes)} State=UP{extra}")
    return lines


def power_save_lines(config: Config, programs: Programs, *, suspend_time: int = 600,
                     version: Version = DEFAULT_VERSION) -> list[str]:
    """The power-save block for Slurm `version` (22.05 unless given): see VERSIONED."""
    version = tuple(version)
    parameters = ["enable_configless"]
    if config.slurm.addresses == "none" and version < (23, 11):
        # Without scontrol updates slurmctld must take the address from the registering slurmd;
        # from 23.11 it always does.
        parameters.insert(0, "cloud_reg_addrs")
    lines = [f"SlurmctldParameters={','.join(parameters)}"]
    for entry in VERSIONED:
        if entry.key != "SlurmctldParameters" and version < entry.until:
            lines.append(f"{entry.key}={entry.item}")
    return lines + [
        "ReturnToService=2",
        f"ResumeProgram={programs.resume}",
        f"SuspendProgram={programs.suspend}",
        f"ResumeFailProgram={programs.resume_fail}",
        f"SuspendTime={suspend_time}",
        f"SuspendTimeout={int(config.timeouts.delete) + SUSPEND_MARGIN}",
        f"ResumeTimeout={int(config.timeouts.boot) + SLURMD_START_MARGIN}",
        "ResumeRate=0",
        "SuspendRate=0",
    ]


def render(config: Config, programs: Programs | None, *, suspend_time: int = 600,
           version: Version | None = None) -> str:
    """The include: header, power-save block (for `version`, 22.05's when None), nodes, partitions."""
    source = f" from {config.source}" if config.source else ""
    target = f" for Slurm {version[0]}.{version[1]:02d}" if version is not None else ""
    out = [f"# Generated by `elastic slurm-conf`{source}{target}. Include it from slurm.conf; do not edit."]
    if programs is not None:
        out += ["", "# Power saving"] + power_save_lines(config, programs, suspend_time=suspend_time,
                                                         version=version or DEFAULT_VERSION)
    out += ["", "# Nodes"] + node_lines(config)
    parts = partition_lines(config)
    if parts:
        out += ["", "# Partitions"] + parts
    return "\n".join(out) + "\n"


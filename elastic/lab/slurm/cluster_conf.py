"""slurm.conf for a whole Slurm cluster on one machine: one slurmd per node, each on its own port.

Pure text generation plus free-port picking; `LocalSlurm` writes what this returns.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import hostlist

# Short timers so tests and the demo see Slurm react in seconds, not minutes.
DEFAULT_POWER_SAVE: dict[str, str | int] = {
    "SuspendTime": 30,
    "SuspendTimeout": 10,
    "ResumeTimeout": 60,
    # 0 = no cap on the nodes resumed or suspended per power-save pass.
    "ResumeRate": 0,
    "SuspendRate": 0,
}

SCONTROL = "/usr/bin/scontrol"

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Layout:
    """Where everything of one cluster lives: under `workdir`, but slurmd spools under `short`.

    slurmstepd makes a Unix socket per job step in SlurmdSpoolDir/<node>/<node>_<job>.<step>, and a
    socket path longer than 108 bytes is fatal ("Unix socket name exceeded maximum length", the job
    is held as launch_failed_requeued_held); a pytest tmp_path is often that long.
    """

    workdir: Path
    short: Path | None = None

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def cgroup_conf(self) -> Path:
        return self.etc / "cgroup.conf"

    @property
    def prolog(self) -> Path:
        return self.etc / "prolog-slurmctld.sh"

    @property
    def munge(self) -> Path:
        return self.workdir / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket"

    @property
    def state(self) -> Path:
        return self.workdir / "slurm" / "ctld"

    @property
    def spool(self) -> Path:
        return self.short / "spool" if self.short else self.workdir / "slurm" / "spool"

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    @property
    def log(self) -> Path:
        return self.workdir / "log"


@dataclass
class Ports:
    """TCP ports on this machine: one for slurmctld, one per node, stable for the cluster's life."""

    ctld: int = 0
    nodes: dict[str, int] = field(default_factory=dict)

    def assign(self, names: Iterable[str]) -> None:
        missing = [n for n in names if n not in self.nodes]
        wanted = len(missing) + (0 if self.ctld else 1)
        fresh = free_ports(wanted, taken=set(self.nodes.values()) | {self.ctld})
        if not self.ctld:
            self.ctld = fresh.pop()
        self.nodes.update(zip(missing, fresh, strict=True))


def free_ports(count: int, taken: set[int] = frozenset()) -> list[int]:
    """`count` distinct free TCP ports, all probed at once so the kernel cannot hand one out twice.

    slurmd binds its port on every address (INADDR_ANY, so that slurmctld can reach it at any
    127.x address a ResumeProgram sets as NodeAddr), so probe the wildcard address, not only
    127.0.0.1. Binding sends nothing on any network.
    """
    ports: list[int] = []
    with ExitStack() as stack:
        while len(ports) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("", 0))
            port = sock.getsockname()[1]
            if port not in taken and port not in ports:
                ports.append(port)
    return ports


@dataclass(frozen=True)
class NodeSpec:
    name: str
    line: str  # the slurm.conf line for this node alone
    cloud: bool


def expand_node_lines(lines: Iterable[str], ports: Mapping[str, int] | None = None) -> list[NodeSpec]:
    """One NodeName line per node, each with its own Port= (and NodeAddr for non-cloud nodes).

    All slurmds share one machine, so a range such as `NodeName=cpu-[1-4]` cannot share a port.
    A CLOUD node gets no NodeAddr: it has none until its ResumeProgram sets one with
    `scontrol update nodeaddr=` (or cloud_reg_addrs does), as on a real cloud, so a program
    that forgets to set it fails here as it would there. A non-cloud node is at 127.0.0.1.
    """
    specs: list[NodeSpec] = []
    for line in lines:
        fields = _fields(line)
        names = hostlist.expand_hostlist(fields.get("nodename", ""))
        if not names or names == ["DEFAULT"]:
            raise ValueError(f"not a NodeName line for real nodes: {line!r}")
        cloud = fields.get("state", "").upper() == "CLOUD"
        addrs = _per_node(fields.get("nodeaddr"), names, line)
        rest = [token for token in line.split() if token.split("=", 1)[0].lower() not in _PER_NODE_KEYS]
        for i, name in enumerate(names):
            parts = [f"NodeName={name}"]
            if addrs:
                parts.append(f"NodeAddr={addrs[i]}")
            elif not cloud:
                parts.append("NodeAddr=127.0.0.1")
            if ports is not None:
                parts.append(f"Port={ports[name]}")
            specs.append(NodeSpec(name, " ".join(parts + rest), cloud))
    return specs


_PER_NODE_KEYS = {"nodename", "nodeaddr", "port"}


def _fields(line: str) -> dict[str, str]:
    return {k.lower(): v for k, _, v in (token.partition("=") for token in line.split())}


def _per_node(value: str | None, names: list[str], line: str) -> list[str]:
    if value is None:
        return []
    values = hostlist.expand_hostlist(value)
    if len(values) != len(names):
        raise ValueError(f"NodeAddr must name one address per node: {line!r}")
    return values


@dataclass(frozen=True)
class Programs:
    resume: str | None = None
    suspend: str | None = None
    resume_fail: str | None = None


def render_conf(layout: Layout, ports: Ports, nodes: list[NodeSpec], partition_lines: Iterable[str], *,
                programs: Programs, power_save: Mapping[str, str | int], slurm_user: str,
                cloud_reg_addrs: bool, prompt_launch: bool, extra_conf: Iterable[str],
                version: Version = (22, 5, 8), inside: Callable[[Path], str] = str) -> str:
    """slurm.conf for Slurm `version` (major, minor, micro): the same cluster on 22.05 and 24.11,
    without the options a later release dropped or no longer needs.

    `inside` gives a path as the daemons see it (in a Debian root: without the root's prefix),
    used for the socket paths, which must stay under 108 bytes; every other path is the host's,
    which works inside a root too (see elastic.lab.slurm.install).
    """
    out = ["# Written by elastic.lab.slurm for a one-machine test cluster; see docs/lab-slurm.md.",
           f"# For Slurm {'.'.join(map(str, version))}.",
           *_daemon_lines(layout, ports, slurm_user, inside),
           *_plugin_lines(),
           *_timer_lines(),
           *_cloud_lines(cloud_reg_addrs, version)]
    if programs.resume or programs.suspend:
        out += _power_save_lines(programs, power_save)
    if prompt_launch:
        out.append(f"PrologSlurmctld={layout.prolog}")
    out = _override(out, extra_conf)
    out += [spec.line for spec in nodes]
    out += list(partition_lines)
    return "\n".join(out) + "\n"


def render_cgroup_conf(version: Version) -> str | None:
    """cgroup.conf, beside slurm.conf, or None for none.

    From 24.05 slurmd initialises its cgroup plugin whatever ProctrackType and TaskPlugin say, and
    refuses to start without a cgroup file system it may use (the root's /sys has none mounted).
    `CgroupPlugin=disabled` (new in 24.05) turns that off; 22.05 rejects the value.
    """
    if version[:2] < (24, 5):
        return None
    return ("# Written by elastic.lab.slurm: no cgroups (proctrack/linuxproc, task/none).\n"
            "CgroupPlugin=disabled\n")


def _override(lines: list[str], extra: Iterable[str]) -> list[str]:
    """`extra` lines replace generated lines with the same key, else are added. (22.05 would take
    the last of two, but logs "specified more than once" as an error.)"""
    out = list(lines)
    for line in extra:
        key = line.split("=", 1)[0].strip().lower()
        same = [i for i, old in enumerate(out) if old.split("=", 1)[0].strip().lower() == key]
        if same and key not in ("nodename", "partitionname"):
            out[same[0]] = line
        else:
            out.append(line)
    return out


# Job credentials stay valid this long; a requeued job may start again after it.
CRED_EXPIRE_SECONDS = 10


def _daemon_lines(layout: Layout, ports: Ports, slurm_user: str, inside: Callable[[Path], str]) -> list[str]:
    return [
        "ClusterName=lab",
        # slurmctld only starts on a host named in SlurmctldHost; "localhost" always matches.
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ports.ctld}",
        f"SlurmUser={slurm_user}",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # Every daemon and command reads the munge socket from here (SLURM_CONF is all they share).
        # cred_expire is also how long a requeued job waits to start again: 120 s by default,
        # which a job requeued off a failed cloud node would spend pending.
        f"AuthInfo=socket={inside(layout.munge_socket)},cred_expire={CRED_EXPIRE_SECONDS}",
        f"StateSaveLocation={layout.state}",
        # %n: each node's slurmd has its own spool, pid file and log on this one machine.
        f"SlurmdSpoolDir={inside(layout.spool)}/%n",
        f"SlurmdPidFile={layout.run}/slurmd-%n.pid",
        f"SlurmdLogFile={layout.log}/slurmd-%n.log",
        f"SlurmctldPidFile={layout.run}/slurmctld.pid",
        f"SlurmctldLogFile={layout.log}/slurmctld.log",
        "SlurmctldDebug=debug",
        "SlurmdDebug=info",
        "DebugFlags=Power",
        # Debian's default /usr/bin/mail is not installed (24.11 logs "Configured MailProg is invalid").
        "MailProg=/bin/true",
    ]


def _plugin_lines() -> list[str]:
    # Nothing that needs cgroups, a database or an MPI stack: plain processes as the submitter.
    return [
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        # All "nodes" share this machine's real CPUs and memory; schedule on the configured ones
        # so a node may claim more memory than the machine has.
        "SlurmdParameters=config_overrides",
    ]


def _timer_lines() -> list[str]:
    return [
        "SchedulerParameters=sched_interval=2,bf_interval=1,batch_sched_delay=0,sched_min_interval=0",
        "MessageTimeout=10",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "KillWait=2",
        # Keep finished jobs visible to `scontrol show job` long enough for a test to see them.
        "MinJobAge=600",
        "ReturnToService=2",
    ]


def _cloud_lines(cloud_reg_addrs: bool, version: Version) -> list[str]:
    params = ["power_save_interval=1", "power_save_min_interval=0"]
    lines = []
    if version[:2] < (23, 11):
        # From 23.11 a registering CLOUD node always gets slurmd's source address: cloud_reg_addrs
        # and NoAddrCache are logged as defunct, and fan-out skips nodes without an address.
        if cloud_reg_addrs:
            params.insert(0, "cloud_reg_addrs")
        lines += [
            # Addresses change with every boot; never reuse one cached from an earlier boot.
            "CommunicationParameters=NoAddrCache",
            # 22.05 cannot fan messages out through nodes that have no address yet.
            "TreeWidth=65533",
        ]
    if version[:2] < (23, 2):
        # 22.05 hides CLOUD nodes (all states) from scontrol/sinfo without this; 23.02 dropped the flag.
        lines.append("PrivateData=cloud")
    return [f"SlurmctldParameters={','.join(params)}", *lines]


def _power_save_lines(programs: Programs, power_save: Mapping[str, str | int]) -> list[str]:
    # slurmctld silently disables power saving unless both programs are set (checked by caller).
    lines = [f"ResumeProgram={programs.resume}", f"SuspendProgram={programs.suspend}"]
    if programs.resume_fail:
        lines.append(f"ResumeFailProgram={programs.resume_fail}")
    settings = {**DEFAULT_POWER_SAVE, **power_save}
    return lines + [f"{key}={value}" for key, value in settings.items()]


def render_prolog(layout: Layout, timeout: int) -> str:
    """A PrologSlurmctld that returns once the job's nodes have registered.

    slurmctld 22.05 launches a batch job whose nodes were powered up only from its periodic
    job_time_limit() pass, every 30 s (PERIODIC_TIMEOUT), or when a PrologSlurmctld finishes
    (prolog_running_decr). So this prolog waits, bounded, until no node of the job is still
    POWERING_UP, or the job is no longer CONFIGURING (cancelled, requeued): then slurmctld
    launches at once. It always exits 0: a non-zero exit would requeue the job.
    `scontrol wait_job` cannot be used: it also waits for this very prolog to finish.
    slurmctld gives a prolog no PATH and no SLURM_CONF, hence the absolute paths.
    """
    return f"""#!/bin/sh
# Written by elastic.lab.slurm (see render_prolog there): hold the job until its nodes registered.
export PATH=/usr/bin:/bin SLURM_CONF={layout.conf}
end=$(( $(date +%s) + {timeout} ))
while [ "$(date +%s)" -lt "$end" ]; do
    case "$({SCONTROL} -o show job "$SLURM_JOB_ID" 2>/dev/null)" in
        *JobState=CONFIGURING*) ;;
        *) exit 0 ;;
    esac
    case "$({SCONTROL} -o show node "$SLURM_JOB_NODELIST" 2>/dev/null)" in
        *POWERING_UP*|*POWERED_DOWN*) sleep 0.2 ;;
        *) exit 0 ;;
    esac
done
exit 0
"""

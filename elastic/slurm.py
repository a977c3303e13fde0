"""The only module that runs Slurm commands: scontrol, always as an argv list, never a shell.

`Slurm` turns what the flows want (node states, addresses, state changes with reasons) into
scontrol calls through an injected `Runner`, so unit tests pass a fake runner and record argv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from elastic import process
from elastic.errors import SlurmError, UsageError
from elastic.hostlists import compress, expand

Runner = Callable[[Sequence[str]], str]
"""Runs argv and returns its stdout; raises SlurmError when the program fails."""

STATES = frozenset({"power_down", "power_down_force", "power_down_asap", "power_up", "resume", "down", "drain",
                    "idle"})
# scontrol refuses state=down/drain without a reason ("You must specify a reason").
STATES_NEEDING_REASON = frozenset({"down", "drain"})


def subprocess_runner(env: Mapping[str, str] | None = None, timeout: float = 30) -> Runner:
    """A Runner over subprocess.run; `env` None inherits ours (slurmctld sets SLURM_CONF).

    scontrol runs in a session of its own, and a SIGTERM that comes while it runs is held back
    until it is done (`process.uninterrupted`): from 23.02 slurmscriptd kills our whole process
    group at the timeout, SIGTERM then SIGKILL 10 ms later, and an update of node states or
    addresses that has started should still reach slurmctld.
    """
    environment = dict(env) if env is not None else None

    def run(argv: Sequence[str]) -> str:
        argv = list(argv)
        shown = " ".join(argv[:3])
        try:
            with process.uninterrupted():
                done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                      env=environment, timeout=timeout, check=False, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{shown}: no answer after {timeout:g}s") from None
        except OSError as exc:
            raise SlurmError(f"{shown}: cannot run: {exc.strerror or exc}") from None
        if done.returncode != 0:
            # scontrol prints some errors ("Node x not found") on stdout, most on stderr.
            detail = _first_line(done.stderr) or _first_line(done.stdout) or "no output"
            raise SlurmError(f"{shown}: exit {done.returncode}: {detail}")
        return done.stdout

    return run


def _first_line(text: str | None) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def find_command(name: str, configured: str | None = None) -> str:
    """The absolute path of a Slurm command: `configured` when given, else found on PATH.

    slurmctld gives its programs no PATH, so without one we search the usual system directories.
    """
    if configured:
        if os.sep not in configured:
            name = configured
        elif os.path.isfile(configured) and os.access(configured, os.X_OK):
            return os.path.abspath(configured)
        else:
            raise SlurmError(f"{name}: {configured} is not an executable file")
    search = os.environ.get("PATH") or process.DEFAULT_PATH
    found = shutil.which(name, path=search)
    if found is None:
        raise SlurmError(f"{name}: not found in {search}; set its path in the config")
    return os.path.abspath(found)


class _Flag:
    """A NodeState attribute: whether the node's state carries this flag (`IDLE+CLOUD+POWERED_DOWN`)."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __get__(self, node: NodeState, owner: type[NodeState] | None = None) -> bool:
        return self.flag in node.flags


@dataclass(frozen=True)
class NodeState:
    """One node as `scontrol show node` prints it."""

    name: str
    state: str  # the complete state, e.g. "IDLE+CLOUD+POWERED_DOWN"
    base: str  # "IDLE", "DOWN", "ALLOCATED", "MIXED", ...
    flags: frozenset[str]  # {"CLOUD", "POWERED_DOWN"}
    reason: str = ""  # as set, without scontrol's " [user@time]" suffix
    addr: str = ""
    hostname: str = ""

    @classmethod
    def from_state(cls, name: str, state: str, **fields: str) -> NodeState:
        base, *flags = state.split("+")
        return cls(name=name, state=state, base=base, flags=frozenset(flags), **fields)

    powered_down = _Flag("POWERED_DOWN")
    powering_up = _Flag("POWERING_UP")
    powering_down = _Flag("POWERING_DOWN")
    drain = _Flag("DRAIN")
    cloud = _Flag("CLOUD")
    not_responding = _Flag("NOT_RESPONDING")

    @property
    def down(self) -> bool:
        return self.base == "DOWN"


class Slurm:
    """scontrol, through a Runner. Every method is one scontrol call (or none for an empty batch)."""

    def __init__(self, run: Runner, *, scontrol: str = "scontrol"):
        self._run = run
        self._scontrol = scontrol

    def nodes(self, names: Iterable[str] | None = None) -> dict[str, NodeState]:
        """The nodes slurmctld shows, optionally only those named; a name it does not show is absent.

        We ask for all nodes and filter: with a hostlist argument scontrol prints "Node x not found"
        and exits 1 for any unknown name, which would hide the nodes it did find. In 22.05 a
        powered-down CLOUD node is not shown at all unless slurm.conf has PrivateData=cloud, so an
        absent node is "unknown or hidden", not "does not exist". `-a` shows nodes of hidden
        partitions too.
        """
        output = self._run([self._scontrol, "-a", "-o", "show", "node"])
        nodes = parse_nodes(output)
        if names is None:
            return nodes
        wanted = set(names)
        return {name: node for name, node in nodes.items() if name in wanted}

    def node_fields(self, names: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
        """Every field `scontrol -o show node` prints, by node name (same visibility as `nodes`)."""
        output = self._run([self._scontrol, "-a", "-o", "show", "node"])
        wanted = set(names) if names is not None else None
        found: dict[str, dict[str, str]] = {}
        for line in output.splitlines():
            if not line.strip() or line.strip() == "No nodes in the system":
                continue
            fields = parse_node_line(line)
            if "NodeName" in fields and (wanted is None or fields["NodeName"] in wanted):
                found[fields["NodeName"]] = fields
        return found

    def jobs_by_node(self) -> dict[str, list[int]]:
        """The ids of the jobs that hold each node now (configuring, running, completing)."""
        return parse_jobs_by_node(self._run([self._scontrol, "-o", "show", "job"]))

    def update_addresses(self, addrs: Mapping[str, str], hostnames: Mapping[str, str] | None = None) -> None:
        """Tell slurmctld where nodes are, in one call for the whole batch.

        scontrol matches NodeAddr and NodeHostName to NodeName by position, so all three are
        explicit comma lists in one order (a compressed hostlist could reorder the names).
        """
        if not addrs:
            return
        names = list(addrs)
        if hostnames is not None and set(hostnames) != set(names):
            raise ValueError(f"hostnames must name the same nodes as addrs: {sorted(set(hostnames) ^ set(names))}")
        for value in [*names, *addrs.values(), *(hostnames or {}).values()]:
            _check_list_item(value)
        argv = [self._scontrol, "update", f"nodename={','.join(names)}",
                f"nodeaddr={','.join(addrs[n] for n in names)}"]
        if hostnames is not None:
            argv.append(f"nodehostname={','.join(hostnames[n] for n in names)}")
        self._run(argv)

    def set_state(self, names: Sequence[str], state: str, reason: str | None = None) -> None:
        """Change the state of nodes in one call; down and drain need a reason."""
        if state not in STATES:
            raise ValueError(f"unknown node state {state!r}; one of {', '.join(sorted(STATES))}")
        if state in STATES_NEEDING_REASON and not reason:
            raise ValueError(f"state={state} needs a reason")
        if not names:
            return
        # The reason is one argv element: spaces and quotes reach slurmctld as they are. A newline
        # would break `scontrol show node` output into lines, so it becomes a space.
        argv = [self._scontrol, "update", f"nodename={compress(names)}", f"state={state}"]
        if reason:
            argv.append(f"reason={' '.join(reason.split())}")
        self._run(argv)

    def config(self) -> dict[str, str]:
        """`scontrol show config` as a dict of its "Key = value" lines (the first of a repeated key)."""
        return parse_show_config(self._run([self._scontrol, "show", "config"]))

    def version(self) -> tuple[int, int, int]:
        """The running slurmctld's version, from `scontrol show config` (SLURM_VERSION)."""
        return version_of_config(self.config())

    def client_version(self) -> tuple[int, int, int]:
        """The installed scontrol's version (`scontrol --version`: "slurm 24.11.5"); needs no slurmctld."""
        output = self._run([self._scontrol, "--version"]).strip()
        try:
            return parse_version(output.split()[-1] if output else "")
        except UsageError:
            raise SlurmError(f"{self._scontrol} --version: cannot read a version in {output[:60]!r}") from None

    def ping(self) -> bool:
        """True when the primary slurmctld answers."""
        try:
            output = self._run([self._scontrol, "ping"])
        except SlurmError:
            return False
        # One line per controller: "Slurmctld(primary) at ctl is UP", then "(backup)" lines.
        # scontrol exits 0 when any controller answers, so the primary's line decides.
        return any(re.fullmatch(r"Slurmctld\(primary\) at \S+ is UP", line.strip()) for line in output.splitlines())

    def reconfigure(self) -> None:
        """Make slurmctld re-read slurm.conf (it also resets addresses of powered-down cloud nodes)."""
        self._run([self._scontrol, "reconfigure"])


# ---- versions ----------------------------------------------------------------------------------

# `22.05.8`, `24.11`, `25.05.0-0rc1`, `24.11.5-1` (a packager's suffix is ignored).
_VERSION = re.compile(r"(\d{1,3})\.(\d{1,2})(?:\.(\d{1,3}))?(?:[-+~][0-9A-Za-z.+~-]*)?")


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, micro) of a Slurm version: `24.11.5` is (24, 11, 5), `23.02` is (23, 2, 0).

    Compared as tuples: (23, 2, 0) < (23, 11, 0). Anything else is a UsageError naming the text.
    """
    match = _VERSION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise UsageError(f"{text!r} is not a Slurm version (like 24.11 or 24.11.5)")
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro or 0)


def version_text(version: Sequence[int]) -> str:
    """`24.11` or `24.11.5` (Slurm writes the minor with two digits: 23.02)."""
    text = f"{version[0]}.{version[1]:02d}"
    return text + (f".{version[2]}" if len(version) > 2 and version[2] else "")


def version_of_config(config: Mapping[str, str]) -> tuple[int, int, int]:
    """SLURM_VERSION of `scontrol show config`; a SlurmError when missing or not a version."""
    text = config.get("SLURM_VERSION")
    if text is None:
        raise SlurmError("scontrol show config: no SLURM_VERSION line")
    try:
        return parse_version(text)
    except UsageError:
        raise SlurmError(f"scontrol show config: SLURM_VERSION {text!r} is not a Slurm version") from None


def _check_list_item(value: str) -> None:
    if not value or re.search(r"[\s,\[\]]", value):
        raise ValueError(f"{value!r} cannot be an item of an scontrol comma list")


# ---- parsing `scontrol -o show node` ---------------------------------------------------------

# Every key slurm_sprint_node_table() prints, 22.05 to 25.x.
NODE_KEYS = frozenset("""
    NodeName Arch CpuBind CoresPerSocket CPUAlloc CPUEfctv CPUErr CPUTot CPULoad AvailableFeatures
    ActiveFeatures Gres GresDrain GresUsed NodeAddr NodeHostName BcastAddr Port Version OS RealMemory
    AllocMem FreeMem Sockets Boards CoreSpecCount CPUSpecList MemSpecLimit RestrictedCoresPerGPU State
    ThreadsPerCore TmpDisk Weight Owner MCS_label NextState Partitions BootTime SlurmdStartTime
    LastBusyTime ResumeAfterTime CfgTRES AllocTRES CapWatts CurrentWatts AveWatts LowestJoules
    ConsumedJoules ExtSensorsJoules ExtSensorsWatts ExtSensorsTemp Reason Comment Extra InstanceId
    InstanceType ReservationName Topology
""".split())
# Values printed as free text, with spaces: OS is `uname -a`-like ("Linux 6.1.0 #1 SMP ..."),
# Reason/Comment/Extra are whatever an admin or a program set. Inside them only a known key
# starts the next field, so "Reason=elastic: quota: cpus=4" stays one reason.
FREE_TEXT_KEYS = frozenset({"OS", "Reason", "Comment", "Extra"})
_KEY = re.compile(r"(?:^|(?<= ))([A-Za-z_][A-Za-z0-9_]*)=")
# scontrol appends who set the reason and when: "Reason=down for test [root@2024-01-01T00:00:00]".
# The time follows SLURM_TIME_FORMAT, so only its brackets are relied on. A multi-line reason is
# printed on one line with its continuation lines after the suffix, separated by runs of spaces.
_REASON_SUFFIX = re.compile(r" \[[^\s\[\]@]*@[^\[\]]*\](?=$| {2,})")


def parse_nodes(output: str) -> dict[str, NodeState]:
    """Nodes of `scontrol -o show node` output (one line per node)."""
    nodes: dict[str, NodeState] = {}
    for line in output.splitlines():
        if not line.strip() or line.strip() == "No nodes in the system":
            continue
        fields = parse_node_line(line)
        if "NodeName" not in fields or "State" not in fields:
            raise SlurmError(f"scontrol show node: cannot parse line: {line[:120]!r}")
        reason = _REASON_SUFFIX.sub("", fields.get("Reason", ""), count=1)
        nodes[fields["NodeName"]] = NodeState.from_state(
            fields["NodeName"], fields["State"], reason=reason,
            addr=fields.get("NodeAddr", ""), hostname=fields.get("NodeHostName", ""))
    return nodes


def parse_node_line(line: str) -> dict[str, str]:
    """The key=value fields of one `scontrol -o show node` line; values may hold spaces."""
    line = line.rstrip("\n")
    starts: list[tuple[str, int, int]] = []  # (key, where the key starts, where its value starts)
    for match in _KEY.finditer(line):
        key = match.group(1)
        current = starts[-1][0] if starts else None
        if current is None and match.start() != 0:
            break  # not a node line
        if current is None or key in NODE_KEYS or current not in FREE_TEXT_KEYS:
            starts.append((key, match.start(), match.end()))
    fields: dict[str, str] = {}
    for index, (key, _, value_start) in enumerate(starts):
        value_end = starts[index + 1][1] if index + 1 < len(starts) else len(line)
        fields.setdefault(key, line[value_start:value_end].strip())
    return fields


# Job states whose NodeList holds nodes now; a finished job keeps its NodeList for MinJobAge.
_HOLDING = frozenset({"CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED"})
_JOB_ID = re.compile(r"^JobId=(\d+)\s")
_JOB_STATE = re.compile(r"(?:^|\s)JobState=(\S+)")
_NODE_LIST = re.compile(r"(?:^|\s)NodeList=(\S+)")


def parse_jobs_by_node(output: str) -> dict[str, list[int]]:
    """`scontrol -o show job`: node -> ids of the jobs holding it, from each job's NodeList."""
    found: dict[str, list[int]] = {}
    for line in output.splitlines():
        job_id, state, nodes = _JOB_ID.search(line), _JOB_STATE.search(line), _NODE_LIST.search(line)
        if job_id is None or state is None or nodes is None or state.group(1) not in _HOLDING:
            continue
        if nodes.group(1) == "(null)":
            continue
        try:
            names = expand(nodes.group(1))
        except UsageError:
            continue
        for node in names:
            found.setdefault(node, []).append(int(job_id.group(1)))
    return found


def parse_show_config(output: str) -> dict[str, str]:
    """`scontrol show config`: "Key  = value" lines; headers and status lines are skipped."""
    config: dict[str, str] = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s+= ?(.*)$", line)
        if match:
            config.setdefault(match.group(1), match.group(2).strip())
    return config

"""A model of slurmctld's power-save state machine, for the chaos soak. It is a MODEL, not Slurm.

What it models, from Slurm's source (node_mgr.c update_node, power_save.c, 22.05 to 24.x) and
docs/slurm-power-save.md:

- node states as `scontrol -o show node` prints them: a base state (IDLE, DOWN) and flags (CLOUD,
  POWERED_DOWN, POWERING_UP, POWERING_DOWN, POWER_UP and POWER_DOWN requests, NOT_RESPONDING,
  DRAIN), a reason with scontrol's ` [user@time]` suffix, NodeAddr and NodeHostName;
- `scontrol update nodename=... state=X [reason=...]` as update_node applies it: a reason is set
  whatever the state does; `resume` is refused ("Invalid node state specified") unless the node is
  DOWN or DRAIN, and turns down~ into idle~; `down`/`drain` need a reason; `power_down_force`
  clears POWERING_UP and asks for a power down, is ignored while POWERING_DOWN and repeats on a
  powered-down node; `power_up` asks for a power up, again when POWERING_UP;
- `scontrol update nodename=... nodeaddr=... [nodehostname=...]`, matched by position;
- the power-save pass (`SlurmModel.power_save_pass`): POWER_UP requests become POWERING_UP and a
  ResumeProgram call, POWER_DOWN requests become POWERING_DOWN and a SuspendProgram call,
  POWERING_DOWN ends POWERED_DOWN after SuspendTimeout (a DOWN node stays DOWN), POWERING_UP past
  ResumeTimeout becomes down~ "ResumeTimeout reached" and a ResumeFailProgram call;
- registration: a POWERING_UP node whose VM booted after the power-up request (the soak asks the
  cloud: an ACTIVE server of ours created after it) registers: idle, reason cleared
  (ReturnToService=2); a powered-up node whose VM is gone for SlurmdTimeout goes DOWN
  "Not responding".

What it leaves out: jobs (a power-up is a job's allocation or an admin's power_up; the base state
stays IDLE, never ALLOCATED or MIXED), partitions, features, DRAIN nuances, rates per pass.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from elastic.hostlists import expand

IDLE, DOWN = "IDLE", "DOWN"
# Flags in the order scontrol prints them.
FLAG_ORDER = ("CLOUD", "DRAIN", "NOT_RESPONDING", "POWER_DOWN", "POWERED_DOWN", "POWERING_DOWN", "POWERING_UP",
              "POWER_UP")
TRANSITIONS = frozenset({"POWERING_UP", "POWERING_DOWN", "POWER_UP", "POWER_DOWN"})
NEEDS_REASON = frozenset({"down", "drain"})
KNOWN_STATES = frozenset({"power_down", "power_down_force", "power_down_asap", "power_up", "resume", "down", "drain",
                          "idle", "undrain"})


class ScontrolError(Exception):
    """What real scontrol prints on stderr before exiting 1."""


@dataclass(frozen=True)
class Timing:
    resume_timeout: float = 30.0
    suspend_timeout: float = 10.0
    slurmd_timeout: float = 20.0
    version: str = "22.05.8"


@dataclass
class Node:
    name: str
    base: str = IDLE
    flags: set[str] = field(default_factory=lambda: {"CLOUD", "POWERED_DOWN"})
    reason: str = ""
    reason_set: str = ""  # "slurm@2026-12-02T01:02:03", scontrol's suffix
    addr: str = ""
    hostname: str = ""
    boot_req: float = 0.0  # when POWERING_UP began
    resume_deadline: float = 0.0  # when ResumeTimeout strikes, if earlier than boot_req + ResumeTimeout
    suspend_at: float = 0.0  # when POWERING_DOWN began
    last_seen: float = 0.0  # powered up: the last pass that saw its VM
    # [time, text] noted since the model was read; the store appends them to its journal on save.
    events: list[list[Any]] = field(default_factory=list)

    @property
    def state(self) -> str:
        return "+".join([self.base, *(f for f in FLAG_ORDER if f in self.flags)])

    @property
    def short(self) -> str:
        """sinfo's short form: idle~, idle#, idle%, down~, idle."""
        suffix = ("~" if "POWERED_DOWN" in self.flags else "#" if "POWERING_UP" in self.flags
                  else "%" if "POWERING_DOWN" in self.flags else "*" if "NOT_RESPONDING" in self.flags else "")
        return self.base.lower() + suffix

    @property
    def powered_up(self) -> bool:
        """Slurm counts the node as up: not powered down, not in a power transition."""
        return not (self.flags & (TRANSITIONS | {"POWERED_DOWN"}))

    @property
    def in_transition(self) -> bool:
        return bool(self.flags & TRANSITIONS)

    def note(self, now: float, text: str) -> None:
        self.events.append([round(now, 3), text])

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["flags"] = sorted(self.flags)
        del data["events"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        return cls(**{**data, "flags": set(data["flags"])})


@dataclass
class Calls:
    """The programs a power-save pass starts: node lists per program."""

    resume: list[str] = field(default_factory=list)
    suspend: list[str] = field(default_factory=list)
    resume_fail: list[str] = field(default_factory=list)


class SlurmModel:
    def __init__(self, nodes: dict[str, Node], timing: Timing, config: dict[str, str] | None = None):
        self.nodes = nodes
        self.timing = timing
        self.config = dict(config or {})

    @classmethod
    def fresh(cls, names: Iterable[str], timing: Timing, config: dict[str, str] | None = None) -> SlurmModel:
        return cls({name: Node(name, addr=name, hostname=name) for name in names}, timing, config)

    def to_json(self) -> dict[str, Any]:
        return {"timing": dataclasses.asdict(self.timing), "config": self.config,
                "nodes": {name: node.to_json() for name, node in self.nodes.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlurmModel:
        return cls({name: Node.from_json(node) for name, node in data["nodes"].items()}, Timing(**data["timing"]),
                   data.get("config"))

    # ---- scontrol update ---------------------------------------------------------------------

    def update(self, args: list[str], now: float, who: str = "slurm") -> None:
        """`scontrol update KEY=VALUE...`; raises ScontrolError as scontrol would fail."""
        values: dict[str, str] = {}
        for arg in args:
            key, sep, value = arg.partition("=")
            if not sep:
                raise ScontrolError(f"Invalid input: {arg}")
            values[key.lower()] = value
        if "nodename" not in values:
            raise ScontrolError("No valid entity in update command")
        names = expand(values["nodename"])
        unknown = [name for name in names if name not in self.nodes]
        if unknown:
            raise ScontrolError("Invalid node name specified")
        if "nodeaddr" in values or "nodehostname" in values:
            self._addresses(names, values, now)
        if "state" in values:
            self._state(names, values["state"].lower(), values.get("reason", ""), now, who)
        elif "reason" in values:
            for name in names:
                self._reason(self.nodes[name], values["reason"], now)

    def _addresses(self, names: list[str], values: dict[str, str], now: float) -> None:
        addrs = values.get("nodeaddr", "").split(",") if "nodeaddr" in values else None
        hosts = values.get("nodehostname", "").split(",") if "nodehostname" in values else None
        for listed in (addrs, hosts):
            if listed is not None and len(listed) != len(names):
                raise ScontrolError("NodeAddr/NodeHostName count does not match NodeName count")
        for index, name in enumerate(names):
            node = self.nodes[name]
            if addrs is not None:
                node.addr = addrs[index]
            if hosts is not None:
                node.hostname = hosts[index]
            node.note(now, f"nodeaddr={node.addr} nodehostname={node.hostname}")

    def _reason(self, node: Node, reason: str, now: float) -> None:
        if reason:
            node.reason = reason
            node.reason_set = f"slurm@{_stamp(now)}"

    def _state(self, names: list[str], state: str, reason: str, now: float, who: str) -> None:
        if state not in KNOWN_STATES:
            raise ScontrolError(f"Invalid node state specified: {state}")
        if state in NEEDS_REASON and not reason:
            raise ScontrolError("You must specify a reason when DOWNING or DRAINING a node. Request denied")
        refused = False
        for name in names:
            node = self.nodes[name]
            before = node.state
            self._reason(node, reason, now)
            if not self._apply(node, state, now):
                refused = True
                node.note(now, f"state={state} refused in {before} ({who})")
                continue
            node.note(now, f"state={state}{' reason=' + reason if reason else ''}: {before} -> {node.state} ({who})")
        if refused:
            raise ScontrolError("Invalid node state specified")

    def _apply(self, node: Node, state: str, now: float) -> bool:
        flags = node.flags
        if state == "resume":
            if node.base != DOWN and "DRAIN" not in flags:
                return False
            flags.discard("DRAIN")
            if "POWERING_DOWN" in flags:
                flags.discard("POWERING_DOWN")
                flags.add("POWERED_DOWN")
            if node.base == DOWN:
                node.base = IDLE
                node.reason, node.reason_set = "", ""
                if "POWERED_DOWN" not in flags:
                    flags.add("NOT_RESPONDING")  # _require_node_reg: until slurmd registers again
            return True
        if state in ("down", "drain", "idle", "undrain"):
            if state == "down":
                node.base = DOWN
            elif state == "drain":
                flags.add("DRAIN")
            elif state == "undrain":
                flags.discard("DRAIN")
            else:
                if node.base not in (DOWN, IDLE):
                    return False
                node.base = IDLE
                flags.discard("DRAIN")
            return True
        if state == "power_up":
            if "POWERED_DOWN" in flags or "POWERING_UP" in flags:
                flags.add("POWER_UP")  # a repeated request runs the ResumeProgram again
            return True
        # power_down, power_down_force, power_down_asap
        if "POWERING_DOWN" in flags:
            return True  # "ignoring power down request, already powering down"
        flags.discard("POWERED_DOWN")  # "power down request repeating"
        if state == "power_down_force" or node.base == DOWN:
            flags.discard("POWERING_UP")
            flags.discard("POWER_UP")
        if state == "power_down_asap":
            flags.add("DRAIN")
        flags.add("POWER_DOWN")
        return True

    # ---- slurmctld's power-save pass ----------------------------------------------------------

    def power_save_pass(self, now: float, vm_booted: Callable[[str, float], bool],
                        vm_alive: Callable[[str], bool]) -> Calls:
        """One pass: requests become transitions and program calls, timeouts fire, VMs register.

        `vm_booted(node, since)`: an ACTIVE server of ours for the node, created after `since`;
        `vm_alive(node)`: any live server of ours for it.
        """
        calls = Calls()
        timing = self.timing
        for name, node in sorted(self.nodes.items()):
            flags = node.flags
            if "POWER_UP" in flags and "POWER_DOWN" not in flags and node.base != DOWN:
                flags.discard("POWER_UP")
                if "POWERED_DOWN" in flags or "POWERING_UP" not in flags:
                    node.boot_req, node.resume_deadline = now, 0.0
                flags.discard("POWERED_DOWN")
                flags.add("POWERING_UP")
                calls.resume.append(name)
                node.note(now, f"power-save: ResumeProgram {node.state}")
            elif "POWER_DOWN" in flags and "POWERING_UP" not in flags:
                flags.discard("POWER_DOWN")
                flags.discard("POWER_UP")
                flags.add("POWERING_DOWN")
                node.suspend_at = now
                calls.suspend.append(name)
                node.note(now, f"power-save: SuspendProgram {node.state}")
            elif "POWERING_DOWN" in flags and now > node.suspend_at + timing.suspend_timeout:
                flags.discard("POWERING_DOWN")
                flags.add("POWERED_DOWN")
                flags.discard("NOT_RESPONDING")
                node.note(now, f"power-save: SuspendTimeout over: {node.state}")
            elif "POWERING_UP" in flags and vm_booted(name, node.boot_req):
                flags.discard("POWERING_UP")
                flags.discard("NOT_RESPONDING")
                node.base = IDLE
                node.reason, node.reason_set = "", ""
                node.last_seen = now
                node.note(now, f"slurmd registered: {node.state}")
            elif "POWERING_UP" in flags and now > (node.resume_deadline or node.boot_req + timing.resume_timeout):
                for flag in ("DRAIN", "POWER_DOWN", "POWERING_UP", "POWER_UP"):
                    flags.discard(flag)
                flags.add("POWERED_DOWN")
                node.base = DOWN
                node.reason, node.reason_set = "ResumeTimeout reached", f"slurm@{_stamp(now)}"
                calls.resume_fail.append(name)
                node.note(now, f"power-save: ResumeTimeout reached: {node.state}; ResumeFailProgram")
            elif node.powered_up and node.base == IDLE:
                if vm_alive(name):
                    node.last_seen = now
                    flags.discard("NOT_RESPONDING")
                elif now > node.last_seen + timing.slurmd_timeout:
                    node.base = DOWN
                    flags.add("NOT_RESPONDING")
                    node.reason, node.reason_set = "Not responding", f"slurm@{_stamp(now)}"
                    node.note(now, f"no slurmd for SlurmdTimeout: {node.state}")
        return calls

    # ---- scontrol show -------------------------------------------------------------------------

    def expire(self, name: str, now: float) -> None:
        """ResumeTimeout strikes at the next pass for this POWERING_UP node (the soak's shortcut for
        a slow boot); registration still needs a VM booted after its power-up request."""
        node = self.nodes[name]
        node.resume_deadline = now
        node.note(now, "ResumeTimeout brought forward")

    def show_node_line(self, node: Node) -> str:
        """One `scontrol -o show node` line, fields in slurm_sprint_node_table's order."""
        parts = [f"NodeName={node.name}", "Arch=x86_64", "CoresPerSocket=1", "CPUAlloc=0", "CPUEfctv=1",
                 "CPUTot=1", "CPULoad=0.00", "AvailableFeatures=cloud", "ActiveFeatures=cloud", "Gres=(null)",
                 f"NodeAddr={node.addr or node.name}", f"NodeHostName={node.hostname or node.name}",
                 f"Version={self.timing.version[:5]}", "OS=Linux 6.1.0-chaos #1 SMP Debian", "RealMemory=1800",
                 "AllocMem=0", "FreeMem=N/A", "Sockets=1", "Boards=1", f"State={node.state}", "ThreadsPerCore=1",
                 "TmpDisk=0", "Weight=1", "Owner=N/A", "MCS_label=N/A", "Partitions=cloud",
                 "BootTime=None", "SlurmdStartTime=None", "LastBusyTime=Unknown", "ResumeAfterTime=None",
                 "CfgTRES=cpu=1,mem=1800M,billing=1", "AllocTRES=", "CapWatts=n/a", "CurrentWatts=0",
                 "AveWatts=0", "ExtSensorsJoules=n/s", "ExtSensorsWatts=0", "ExtSensorsTemp=n/s"]
        if node.reason:
            parts.append(f"Reason={node.reason} [{node.reason_set}]")
        return " ".join(parts)

    def show_node(self) -> str:
        if not self.nodes:
            return "No nodes in the system\n"
        return "".join(self.show_node_line(node) + "\n" for _, node in sorted(self.nodes.items()))

    def show_config(self, now: float) -> str:
        """`scontrol show config`: a header, then `Key = value` lines, as 22.05 prints them."""
        lines = {"ResumeTimeout": f"{self.timing.resume_timeout:.0f} sec",
                 "SuspendTimeout": f"{self.timing.suspend_timeout:.0f} sec",
                 "SlurmdTimeout": f"{self.timing.slurmd_timeout:.0f} sec",
                 "SLURM_VERSION": self.timing.version, **self.config}
        width = max(len(key) for key in lines)
        return (f"Configuration data as of {_stamp(now)}\n"
                + "".join(f"{key.ljust(width)} = {value}\n" for key, value in sorted(lines.items())))


def _stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))

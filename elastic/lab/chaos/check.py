"""The invariants at quiescence (docs/design.md), judged from the emulator's own records and the
Slurm model: what the clouds really hold, not what the product believes.

- servers per node: 0 or 1, and 1 only for a node Slurm counts as powered up;
- nothing leaked: no server for a name that is no node of ours (or without our metadata), no
  floating IP of ours (its description carries our mark) off the port of its node's live server, no
  floating IP without our mark, no server group left;
- no node in a power transition, no node DOWN without an `elastic:` reason, and none put there
  by an `elastic: internal` or `elastic: local` failure (a crash) at any time during the run (the
  model's states as the soak saw them, and every run's log);
- the history file reads as JSON, names only our nodes and clouds, and holds no pending delete.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elastic.cloud import floating_ip_owner
from elastic.config import META_CLUSTER, META_NODE
from elastic.lab.chaos.model import DOWN, SlurmModel
from elastic.lab.cloud import LabCloud

REASON_PREFIX = "elastic:"


@dataclass(frozen=True)
class Violation:
    rule: str
    text: str
    node: str | None = None

    def __str__(self) -> str:
        return f"{self.rule}: {self.text}"


def servers_by_node(lab: LabCloud, cluster: str) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """({node: its servers on any cloud}, servers of no node): a server is a node's when it carries
    our cluster and that node in its metadata, or, without our metadata, has the node's name."""
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    foreign: list[dict[str, Any]] = []
    for cloud in lab.clouds:
        for server in lab.servers(cloud):
            server = {**server, "cloud": cloud}
            metadata = server["metadata"]
            if metadata.get(META_CLUSTER) == cluster and metadata.get(META_NODE):
                by_node[metadata[META_NODE]].append(server)
            elif server["name"]:
                by_node[server["name"]].append({**server, "unmarked": True})
            else:
                foreign.append(server)
    return by_node, foreign


def leaked_floating_ips(lab: LabCloud, cluster: str) -> tuple[list[str], list[str]]:
    """(leaked, unmarked): floating IPs carrying our cluster's mark that are not on a port of a live
    server of their node (what `elastic reconcile` removes), and floating IPs without our mark (in
    the soak only elastic makes them, so the mark was lost and no reconcile could ever find them)."""
    leaked, unmarked = [], []
    for name, state in lab.clouds.items():
        with state.lock:
            for fip in state.floating_ips.values():
                owner = floating_ip_owner(fip.description)
                if owner is None or owner[0] != cluster:
                    unmarked.append(f"{name}: {fip.address} (description {fip.description!r})")
                    continue
                port = state.ports.get(fip.port_id) if fip.port_id else None
                server = state.servers.get(port.device_id) if port is not None else None
                if port is None:
                    why = "no port"
                elif server is None or server.task_state == "deleting":
                    why = "port of no live server"
                elif server.metadata.get(META_NODE) != owner[1]:
                    why = f"on {server.name}'s server"
                else:
                    continue
                leaked.append(f"{name}: {fip.address} of {owner[1]} ({why})")
    return leaked, unmarked


def leaked_server_groups(lab: LabCloud) -> list[str]:
    found = []
    for name, state in lab.clouds.items():
        groups = getattr(state, "server_groups", None) or {}
        for group in list(groups.values()):
            found.append(f"{name}: server group {getattr(group, 'name', group)}")
    return found


def check(lab: LabCloud, model: SlurmModel, cluster: str, history_path: Path, *,
          reasons_seen: dict[str, set[str]] | None = None, log_path: Path | None = None) -> list[Violation]:
    violations: list[Violation] = []
    by_node, foreign = servers_by_node(lab, cluster)
    for node_name in sorted(set(by_node) | set(model.nodes)):
        servers = by_node.get(node_name, [])
        node = model.nodes.get(node_name)
        where = ", ".join(f"{s['cloud']}:{s['id'][:8]} {s['status']}" for s in servers)
        if node is None:
            violations.append(Violation("leaked-server", f"{len(servers)} server(s) named {node_name}, no node of "
                                        f"ours: {where}", node_name))
            continue
        unmarked = [s for s in servers if s.get("unmarked")]
        if unmarked:
            violations.append(Violation("unmarked-server", f"{node_name}: server(s) without our metadata: {where}",
                                        node_name))
        if len(servers) > 1:
            violations.append(Violation("duplicate", f"{node_name} ({node.state}) has {len(servers)} servers: {where}",
                                        node_name))
        elif servers and not node.powered_up:
            violations.append(Violation("orphan", f"{node_name} is {node.state} but has a server: {where}", node_name))
        if node.powered_up and node.base != DOWN and not servers:
            violations.append(Violation("missing", f"{node_name} is {node.state} (powered up) without a server",
                                        node_name))
        if node.in_transition:
            violations.append(Violation("transition", f"{node_name} still {node.state}", node_name))
        if node.base == DOWN and not node.reason.startswith(REASON_PREFIX):
            violations.append(Violation("down-without-reason", f"{node_name} is {node.state}, reason "
                                        f"{node.reason or '(none)'!r}", node_name))
    for server in foreign:
        violations.append(Violation("leaked-server", f"{server['cloud']}: unnamed server {server['id']}"))
    leaked_ips, unmarked_ips = leaked_floating_ips(lab, cluster)
    violations.extend(Violation("leaked-floating-ip", text) for text in leaked_ips)
    violations.extend(Violation("unmarked-floating-ip", text) for text in unmarked_ips)
    for text in leaked_server_groups(lab):
        violations.append(Violation("leaked-server-group", text))
    for node_name, reasons in sorted((reasons_seen or {}).items()):
        for reason in sorted(reasons):
            if reason.startswith(f"{REASON_PREFIX} internal") or reason.startswith(f"{REASON_PREFIX} local"):
                violations.append(Violation("crash", f"{node_name} was given {reason!r}", node_name))
    violations.extend(check_history(history_path, set(model.nodes), set(lab.clouds)))
    if log_path is not None:
        seen = {v.text for v in violations if v.rule == "crash"}
        violations.extend(v for v in crashes_in_log(log_path) if v.text not in seen)
    return violations


def crashes_in_log(path: Path) -> list[Violation]:
    """Runs that failed closed on an exception of ours (`elastic: internal`) or of this machine
    (`elastic: local`), from the programs' JSON log: a crash is a violation even when its node
    recovered later."""
    found: list[Violation] = []
    if not path.exists():
        return found
    with open(path, errors="replace") as handle:
        for line in handle:
            if '"elastic: internal' not in line and '"elastic: local' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            reason = str(event.get("reason", ""))
            if reason.startswith((f"{REASON_PREFIX} internal", f"{REASON_PREFIX} local")):
                nodes = event.get("nodes") or [None]
                found.append(Violation("crash", f"{event.get('command')} run {event.get('run_id')}: "
                                       f"{event.get('event')}: {reason}", nodes[0]))
    return found


def check_history(path: Path, nodes: set[str], clouds: set[str]) -> list[Violation]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return [Violation("history", f"{path}: unreadable: {error}")]
    if not isinstance(data, dict):
        return [Violation("history", f"{path}: not a JSON object")]
    found: list[Violation] = []
    for node, entry in sorted((data.get("pending") or {}).items()):
        found.append(Violation("history", f"pending delete left for {node}: {entry}", node if node in nodes else None))
    for node in sorted(data.get("nodes") or {}):
        if node not in nodes:
            found.append(Violation("history", f"failures recorded for {node}, no node of ours"))
    for section in ("clouds", "health", "problems"):
        for cloud in sorted(data.get(section) or {}):
            if cloud not in clouds:
                found.append(Violation("history", f"{section}: {cloud} is no cloud of ours"))
    return found

"""Shared by the admin-command unit tests: a two-pool config, node states as scontrol shows them,
a Slurm stand-in over a dict, and `scontrol show config` as each supported Slurm version prints it."""

from __future__ import annotations

from dataclasses import dataclass, field

from elastic.config import META_CLUSTER, META_NODE, META_POOL, load_config
from elastic.errors import SlurmError
from elastic.slurm import NodeState

CONFIG = """\
cluster: test
clouds:
  alpha: {clouds_yaml: clouds.yaml}
  beta: {clouds_yaml: clouds.yaml}
pools:
  cpu:
    nodes: cpu-[001-004]
    partition: cloud
    slurm: {cpus: 1, real_memory: 1800, features: [cloud]}
    boot: {flavor: m1.small, image: debian-12}
    clouds:
      - {cloud: alpha, network: private}
      - {cloud: beta, network: private}
  gpu:
    nodes: gpu-[1-2]
    slurm: {cpus: 1, real_memory: 1800}
    boot: {flavor: m1.small, image: debian-12}
    clouds:
      - {cloud: beta, network: private}
reconcile: {grace: 600}
"""

NOW = 1_000_000.0
POWERED_DOWN = "IDLE+CLOUD+POWERED_DOWN"
IDLE = "IDLE+CLOUD"
ALLOCATED = "ALLOCATED+CLOUD"
POWERING_UP = "ALLOCATED+CLOUD+POWERING_UP"
POWERING_DOWN = "IDLE+CLOUD+POWERING_DOWN"


def make_config(tmp_path, text: str = CONFIG):
    path = tmp_path / "elastic.yaml"
    path.write_text(text)
    return load_config(path)


def ours(node: str, pool: str = "cpu", cluster: str = "test") -> dict[str, str]:
    return {META_CLUSTER: cluster, META_NODE: node, META_POOL: pool}


def slurm_nodes(**states: str) -> dict[str, NodeState]:
    """Nodes by name (underscores in keyword names stand for '-'); every other node is powered down."""
    nodes = {f"cpu-00{i}": NodeState.from_state(f"cpu-00{i}", POWERED_DOWN) for i in range(1, 5)}
    nodes.update({f"gpu-{i}": NodeState.from_state(f"gpu-{i}", POWERED_DOWN) for i in (1, 2)})
    for key, state in states.items():
        name = key.replace("_", "-")
        nodes[name] = NodeState.from_state(name, state)
    return nodes


@dataclass
class FakeSlurm:
    """Slurm's reads from a dict of NodeState; state changes recorded (and applied when asked)."""

    node_states: dict[str, NodeState] = field(default_factory=slurm_nodes)
    changes: list[tuple[tuple[str, ...], str, str | None]] = field(default_factory=list)
    fail_reads: bool = False
    fail_updates: bool = False
    on_read: object = None  # called before each nodes() read: lets a test change Slurm between looks
    reads: int = 0

    def nodes(self, names=None):
        self.reads += 1
        if callable(self.on_read):
            self.on_read(self)
        if self.fail_reads:
            raise SlurmError("scontrol -a -o show node: exit 1: Unable to contact slurm controller")
        wanted = set(names) if names is not None else None
        return {n: s for n, s in self.node_states.items() if wanted is None or n in wanted}

    def set_state(self, names, state, reason=None):
        if self.fail_updates:
            raise SlurmError("scontrol update: exit 1: Invalid node state specified")
        self.changes.append((tuple(names), state, reason))


# `scontrol show config` of Debian 12's slurmctld 22.05.8 with the power-save block elastic generates.
RUNNING_22_05 = {
    "SLURM_VERSION": "22.05.8",
    "ResumeProgram": "", "SuspendProgram": "", "ResumeFailProgram": "",  # filled per test
    "SuspendTime": "600 sec", "SuspendTimeout": "150 sec", "ResumeTimeout": "900 sec",
    "ResumeRate": "0 nodes/min", "SuspendRate": "0 nodes/min", "TreeWidth": "65533",
    "SlurmctldParameters": "enable_configless", "CommunicationParameters": "NoAddrCache",
    "PrivateData": "cloud", "ReturnToService": "2",
}
# What changes in `scontrol show config` when the block slurm-conf writes for each later version runs.
# PrivateData is printed from a bit mask that has no cloud flag from 23.02; TreeWidth defaults to 16
# from 23.11 (50 before).
RUNNING_23_02 = {"SLURM_VERSION": "23.02.7", "PrivateData": "none"}
RUNNING_23_11 = {"SLURM_VERSION": "23.11.10", "PrivateData": "none", "CommunicationParameters": "(null)",
                 "TreeWidth": "16"}
RUNNING_24_11 = dict(RUNNING_23_11, SLURM_VERSION="24.11.5")
RUNNING_26_05 = dict(RUNNING_23_11, SLURM_VERSION="26.05.3")
RUNNING = {"22.05": {}, "23.02": RUNNING_23_02, "23.11": RUNNING_23_11, "24.11": RUNNING_24_11,
           "26.05": RUNNING_26_05}


def node_fields(config, **overrides):
    nodes = {}
    for pool in config.pools.values():
        for name in pool.node_names:
            nodes[name] = {"NodeName": name, "State": "IDLE+CLOUD+POWERED_DOWN", "CPUTot": str(pool.slurm.cpus),
                           "RealMemory": str(pool.slurm.real_memory),
                           "AvailableFeatures": ",".join(pool.slurm.features) or "(null)",
                           "Partitions": pool.partition or ""}
    for name, fields in overrides.items():
        nodes[name.replace("_", "-")].update(fields)
    return nodes

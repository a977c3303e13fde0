"""The records one emulated cloud holds, and address allocation from a subnet."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field
from typing import Any

_NAMESPACE = uuid.UUID("6f1c4f5e-3c1b-4b7e-9d0a-8e2f0c7a5b11")


def stable_id(*parts: str) -> str:
    """The same id for the same cloud and name on every run: easier to read in logs."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int
    disk: int


@dataclass
class Image:
    id: str
    name: str
    created: float


@dataclass
class Subnet:
    id: str
    network_id: str
    cidr: ipaddress.IPv4Network
    used: set[int] = field(default_factory=set)
    cursor: int = 0  # round-robin, so a freed address is not handed out again at once

    @property
    def gateway(self) -> str:
        return str(self.cidr.network_address + 1)

    def allocate(self) -> str | None:
        first = int(self.cidr.network_address) + 2  # .0 is the network, .1 the gateway
        last = int(self.cidr.broadcast_address) - 1
        size = last - first + 1
        for step in range(size):
            candidate = first + (self.cursor + step) % size
            if candidate not in self.used:
                self.used.add(candidate)
                self.cursor = (candidate - first + 1) % size
                return str(ipaddress.IPv4Address(candidate))
        return None

    def release(self, address: str) -> None:
        self.used.discard(int(ipaddress.IPv4Address(address)))


@dataclass
class Network:
    id: str
    name: str
    external: bool
    subnet: Subnet


@dataclass
class Port:
    id: str
    network_id: str
    subnet_id: str
    device_id: str
    mac: str
    ip: str
    created: float


@dataclass
class FloatingIp:
    id: str
    address: str
    network_id: str
    created: float
    port_id: str | None = None
    fixed_ip: str | None = None
    associated_at: float | None = None  # monotonic
    description: str = ""  # standard-attr-description: Neutron stores it as given, at most 255 characters


@dataclass
class EmulatedServer:
    id: str
    name: str
    flavor: Flavor  # a copy, as Nova embeds the flavor in the instance
    image: Image | None  # None: booted from volume
    metadata: dict[str, str]
    created: float
    updated: float
    network_ids: list[str]  # the NICs it gets when ACTIVE
    key_name: str | None = None
    security_groups: list[str] = field(default_factory=lambda: ["default"])
    user_data: str | None = None
    availability_zone: str = "nova"
    config_drive: str = ""
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    status: str = "BUILD"
    vm_state: str = "building"
    task_state: str | None = "scheduling"
    power_state: int = 0
    locked: bool = False
    fault: dict[str, Any] | None = None
    launched_at: float | None = None
    ready_at: float = 0.0  # monotonic: BUILD ends
    gone_at: float | None = None  # monotonic: a deleting server disappears
    first_address: str = ""
    host: str | None = None  # the compute host the scheduler chose; None: not scheduled (or no valid host)


@dataclass
class BootSpec:
    name: str
    flavor_ref: str
    image_ref: str  # "" when booting from a volume
    networks: list[dict[str, str]] | str | None  # None: not given; "auto"/"none"
    key_name: str | None = None
    security_groups: list[str] = field(default_factory=lambda: ["default"])
    user_data: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    availability_zone: str | None = None
    config_drive: bool = False
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    group: str | None = None  # the scheduler hint `group`: a server group's id


@dataclass
class ServerGroup:
    """Nova's instance group: one policy (Nova kept a one-item `policies` list until 2.64), rules
    (2.64: anti-affinity's max_server_per_host), and the ids of its servers that are not deleted."""

    id: str
    name: str
    policy: str
    rules: dict[str, int]
    created: float
    members: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HookEvent:
    hook: str  # "on_active" | "on_deleted"
    cloud: str
    name: str
    server_id: str
    address: str


@dataclass
class Token:
    id: str
    issued: float
    expires: float
    methods: list[str]
    application_credential: dict[str, str] | None = None

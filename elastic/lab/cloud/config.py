"""The emulator's configuration: defaults, and validation that names the offending key. Every
address a cloud hands out must stay on loopback, so CIDRs outside 127.0.0.0/8 are refused."""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from elastic.lab.cloud.faults import Faults

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
QUOTA_KEYS = ("instances", "cores", "ram", "floating_ips", "server_groups", "server_group_members")

DEFAULT_FLAVORS = [
    {"name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1},
    {"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
    {"name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
    {"name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80},
]
DEFAULT_CLOUD: dict[str, Any] = {
    "region": "RegionOne",
    "max_microversion": "2.96",
    "boot_seconds": 1.0,
    "delete_seconds": 0.5,
    "max_limit": 1000,
    "auth": {"username": "demo", "password": "secret", "project_name": "demo",
             "user_domain_name": "Default", "project_domain_name": "Default"},
    "application_credentials": [],
    "token_ttl_seconds": 3600,
    "flavors": DEFAULT_FLAVORS,
    "images": [{"name": "debian-12"}],
    "networks": [{"name": "private", "cidr": "127.10.0.0/16"},
                 {"name": "public", "cidr": "127.20.0.0/16", "external": True}],
    "keypairs": [],
    "security_groups": ["default"],
    # Nova's defaults for server groups: 10 groups a project, 10 servers a group.
    "quotas": {"instances": 100, "cores": 400, "ram": 1024000, "floating_ips": 50, "server_groups": 10,
               "server_group_members": 10},
    # Compute hosts the scheduler places servers on, and how many servers each holds (-1: no limit).
    "hosts": 4,
    "host_capacity": -1,
    "faults": {},
    "hooks": {},
    "hook_timeout_seconds": 60.0,
}
_AUTH_KEYS = {"username", "password", "project_name", "user_domain_name", "project_domain_name"}
_CLOUD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class LabConfigError(ValueError):
    """A configuration mistake; the message names the key."""


@dataclass(frozen=True)
class FlavorSpec:
    name: str
    vcpus: int
    ram: int
    disk: int


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    cidr: ipaddress.IPv4Network
    external: bool = False


@dataclass
class CloudSpec:
    name: str
    region: str
    max_microversion: tuple[int, int]
    boot_seconds: float
    delete_seconds: float
    max_limit: int
    auth: dict[str, str]
    application_credentials: list[dict[str, str]]
    token_ttl_seconds: float
    flavors: list[FlavorSpec]
    images: list[str]
    networks: list[NetworkSpec]
    keypairs: list[str]
    security_groups: list[str]
    quotas: dict[str, int]
    faults: Faults
    hosts: int = 4
    host_capacity: int = -1  # servers a host holds; -1: no limit
    hooks: dict[str, str | list[str]] = field(default_factory=dict)
    hook_timeout_seconds: float = 60.0


def parse_version(text: Any, where: str) -> tuple[int, int]:
    match = re.fullmatch(r"2\.(\d+)", str(text).strip())
    if not match:
        raise LabConfigError(f"{where}: {text!r} is not a compute microversion like 2.96")
    return (2, int(match.group(1)))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML file as a dict; any problem is a LabConfigError naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LabConfigError(f"{path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise LabConfigError(f"{path}: the top level must be a mapping")
    return data


def parse_lab_config(config: dict[str, Any] | None) -> dict[str, CloudSpec]:
    """{cloud name: CloudSpec}; no config (or no clouds) means one default cloud named `lab`."""
    config = dict(config or {})
    clouds = config.pop("clouds", None) or {"lab": {}}
    if config:
        raise LabConfigError(f"unknown top-level key(s): {', '.join(sorted(config))}")
    if not isinstance(clouds, dict):
        raise LabConfigError("clouds: must be a mapping of cloud name to settings")
    return {str(name): _cloud(str(name), body) for name, body in clouds.items()}


def _cloud(name: str, body: Any) -> CloudSpec:
    where = f"clouds.{name}"
    if not _CLOUD_NAME.match(name) or name == "_lab":
        raise LabConfigError(f"{where}: a cloud name must be letters, digits, '.', '_' or '-'")
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise LabConfigError(f"{where}: must be a mapping")
    unknown = set(body) - set(DEFAULT_CLOUD)
    if unknown:
        raise LabConfigError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    merged = copy.deepcopy(DEFAULT_CLOUD)
    merged.update(copy.deepcopy(body))
    try:
        return CloudSpec(
            name=name,
            region=str(merged["region"]),
            max_microversion=parse_version(merged["max_microversion"], f"{where}.max_microversion"),
            boot_seconds=_seconds(merged["boot_seconds"], f"{where}.boot_seconds"),
            delete_seconds=_seconds(merged["delete_seconds"], f"{where}.delete_seconds"),
            max_limit=_positive_int(merged["max_limit"], f"{where}.max_limit"),
            auth=_auth(merged["auth"], f"{where}.auth"),
            application_credentials=_app_creds(merged["application_credentials"], f"{where}.application_credentials"),
            token_ttl_seconds=_seconds(merged["token_ttl_seconds"], f"{where}.token_ttl_seconds"),
            flavors=[flavor_spec(item, f"{where}.flavors[{i}]")
                     for i, item in enumerate(_list(merged["flavors"], where, "flavors"))],
            images=[_named(item, f"{where}.images[{i}]")
                    for i, item in enumerate(_list(merged["images"], where, "images"))],
            networks=_networks(_list(merged["networks"], where, "networks"), f"{where}.networks"),
            keypairs=[_named(item, f"{where}.keypairs[{i}]")
                      for i, item in enumerate(_list(merged["keypairs"], where, "keypairs"))],
            security_groups=[_named(item, f"{where}.security_groups[{i}]")
                             for i, item in enumerate(_list(merged["security_groups"], where, "security_groups"))],
            quotas=quota_limits({**DEFAULT_CLOUD["quotas"], **(merged["quotas"] or {})}, f"{where}.quotas"),
            faults=Faults.from_dict(merged["faults"] or {}, where=f"{where}.faults"),
            hosts=_positive_int(merged["hosts"], f"{where}.hosts"),
            host_capacity=_capacity(merged["host_capacity"], f"{where}.host_capacity"),
            hooks=_hooks(merged["hooks"] or {}, f"{where}.hooks"),
            hook_timeout_seconds=_seconds(merged["hook_timeout_seconds"], f"{where}.hook_timeout_seconds"),
        )
    except ValueError as exc:  # Faults raise ValueError; keep one error type for callers
        if isinstance(exc, LabConfigError):
            raise
        raise LabConfigError(str(exc)) from None


def flavor_spec(item: Any, where: str) -> FlavorSpec:
    if not isinstance(item, dict) or "name" not in item:
        raise LabConfigError(f"{where}: a flavor needs name, vcpus, ram, disk")
    unknown = set(item) - {"name", "vcpus", "ram", "disk"}
    if unknown:
        raise LabConfigError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    return FlavorSpec(name=str(item["name"]), vcpus=_positive_int(item.get("vcpus", 1), f"{where}.vcpus"),
                      ram=_positive_int(item.get("ram", 512), f"{where}.ram"),
                      disk=_non_negative_int(item.get("disk", 1), f"{where}.disk"))


def quota_limits(values: Any, where: str) -> dict[str, int]:
    if not isinstance(values, dict):
        raise LabConfigError(f"{where}: must be a mapping")
    unknown = set(values) - set(QUOTA_KEYS)
    if unknown:
        raise LabConfigError(f"{where}: unknown quota(s): {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(QUOTA_KEYS)})")
    limits = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise LabConfigError(f"{where}.{key}: {value!r} is not an integer >= -1 (-1 is unlimited)")
        limits[key] = value
    return limits


def _networks(items: list[Any], where: str) -> list[NetworkSpec]:
    networks, names = [], set()
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, dict) or "name" not in item or "cidr" not in item:
            raise LabConfigError(f"{here}: a network needs name and cidr")
        unknown = set(item) - {"name", "cidr", "external"}
        if unknown:
            raise LabConfigError(f"{here}: unknown key(s): {', '.join(sorted(unknown))}")
        try:
            cidr = ipaddress.ip_network(str(item["cidr"]), strict=False)
        except ValueError:
            raise LabConfigError(f"{here}.cidr: {item['cidr']!r} is not a CIDR") from None
        if cidr.version != 4 or not cidr.subnet_of(LOOPBACK) or cidr.num_addresses < 8:
            raise LabConfigError(f"{here}.cidr: {cidr} must be an IPv4 /29 or larger inside 127.0.0.0/8 "
                                 "(addresses handed out must stay on this machine)")
        if item["name"] in names:
            raise LabConfigError(f"{here}.name: {item['name']!r} is used twice")
        names.add(item["name"])
        networks.append(NetworkSpec(str(item["name"]), cidr, bool(item.get("external", False))))
    return networks


def _auth(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise LabConfigError(f"{where}: must be a mapping")
    unknown = set(value) - _AUTH_KEYS
    if unknown:
        raise LabConfigError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    return {**DEFAULT_CLOUD["auth"], **{k: str(v) for k, v in value.items()}}


def _app_creds(value: Any, where: str) -> list[dict[str, str]]:
    creds = []
    for i, item in enumerate(value or []):
        if not isinstance(item, dict) or not item.get("id") or not item.get("secret"):
            raise LabConfigError(f"{where}[{i}]: an application credential needs id and secret (name optional)")
        creds.append({"id": str(item["id"]), "secret": str(item["secret"]), "name": str(item.get("name", item["id"]))})
    return creds


def _hooks(value: Any, where: str) -> dict[str, str | list[str]]:
    if not isinstance(value, dict):
        raise LabConfigError(f"{where}: must be a mapping")
    for key, command in value.items():
        if key not in ("on_active", "on_deleted"):
            raise LabConfigError(f"{where}: unknown hook {key!r} (known: on_active, on_deleted)")
        is_argv = isinstance(command, list) and command and all(isinstance(a, str) for a in command)
        if not (isinstance(command, str) or is_argv):
            raise LabConfigError(f"{where}.{key}: a shell command string or a non-empty argv list")
    return dict(value)


def _list(value: Any, where: str, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise LabConfigError(f"{where}.{key}: must be a list")
    return value


def _named(item: Any, where: str) -> str:
    name = item.get("name") if isinstance(item, dict) else item
    if not isinstance(name, str) or not name:
        raise LabConfigError(f"{where}: needs a name")
    return name


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise LabConfigError(f"{where}: {value!r} is not a number of seconds >= 0")
    return float(value)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LabConfigError(f"{where}: {value!r} is not an integer >= 1")
    return value


def _capacity(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        raise LabConfigError(f"{where}: {value!r} is not an integer >= 1, or -1 (no limit)")
    return value


def _non_negative_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LabConfigError(f"{where}: {value!r} is not an integer >= 0")
    return value

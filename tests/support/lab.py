"""Shared by the tests that use the lab OpenStack emulator: cloud specs and reading what it holds."""

from __future__ import annotations

# Boots and deletes that take (almost) no time.
FAST = {"boot_seconds": 0.05, "delete_seconds": 0.05}
PASSWORD = "pw-31c9-not-in-logs"


def lab_cloud(**overrides) -> dict:
    cloud = {
        "boot_seconds": 0.2, "delete_seconds": 0.1,
        "flavors": [{"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20}],
        "images": [{"name": "debian-12"}],
        "networks": [{"name": "private", "cidr": "127.10.0.0/16"},
                     {"name": "public", "cidr": "127.20.0.0/16", "external": True}],
        "keypairs": ["hpc"],
        "quotas": {"instances": 20, "cores": 40, "ram": 102400, "floating_ips": 10},
        "auth": {"username": "demo", "password": PASSWORD, "project_name": "demo",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
    }
    cloud.update(overrides)
    return cloud


def _get(server, key):
    if isinstance(server, dict):
        return server.get(key, server.get(f"OS-EXT-STS:{key}"))
    return getattr(server, key, None)


def server_id(server) -> str:
    return server if isinstance(server, str) else _get(server, "id")


def check_rows(out: str) -> dict[str, str]:
    """`elastic check` output as CHECK -> its whole line, cut at the header's column starts."""
    lines = out.splitlines()
    start, end = lines[0].index("CHECK"), lines[0].index("DETAIL")
    return {line[start:end].strip(): line for line in lines[1:-1] if line.strip()}

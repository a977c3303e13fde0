"""The control endpoint under /_lab/ on the emulator's port: the request log, servers and faults
as JSON for tests and benchmarks in other processes. Never subject to faults, never logged."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from elastic.lab.cloud.messages import Response

if TYPE_CHECKING:
    from elastic.lab.cloud.lab import LabCloud


def _error(status: int, message: str) -> Response:
    return Response(status, {"error": {"code": status, "message": message}})


def handle(lab: LabCloud, method: str, path: str, query: str, body: bytes) -> Response:
    cloud = parse_qs(query).get("cloud", [None])[-1]
    if cloud is not None and cloud not in lab.clouds:
        return _error(404, f"no cloud named {cloud!r}")
    if (method, path) == ("GET", "/clouds"):
        return Response(200, {"clouds": {name: {"auth_url": lab.auth_url(name)} for name in lab.clouds}})
    if (method, path) == ("GET", "/requests"):
        return Response(200, {"requests": lab.requests(cloud), "counts": lab.request_counts(cloud)})
    if (method, path) == ("POST", "/reset-requests"):
        lab.reset_requests()
        return Response(200, {"ok": True})
    if (method, path) == ("GET", "/servers"):
        names = [cloud] if cloud else list(lab.clouds)
        return Response(200, {"servers": {name: lab.servers(name) for name in names}})
    if (method, path) == ("GET", "/server-groups"):
        names = [cloud] if cloud else list(lab.clouds)
        return Response(200, {"server_groups": {name: lab.server_groups(name) for name in names}})
    if path.startswith("/faults/"):
        name = path.removeprefix("/faults/")
        if name not in lab.clouds:
            return _error(404, f"no cloud named {name!r}")
        return _faults(lab, method, name, body)
    return _error(404, f"no control endpoint {method} /_lab{path}")


def _faults(lab: LabCloud, method: str, name: str, body: bytes) -> Response:
    if method == "GET":
        return Response(200, {"faults": lab.faults(name)})
    if method == "DELETE":
        lab.clear_faults(name)
        return Response(200, {"faults": lab.faults(name)})
    if method != "POST":
        return _error(405, "faults take GET, POST (merge) or DELETE (clear)")
    try:
        changes: Any = json.loads(body or b"{}")
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object of faults")
        return Response(200, {"faults": lab.set_faults(name, **changes)})
    except ValueError as exc:
        return _error(400, str(exc))

"""The request and response objects every emulated service handles, and the error shapes of the
real services (Nova, Neutron, Keystone, Glance each spell their errors differently)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

# Nova's webob fault names by status (nova/api/openstack/wsgi.py); anything else is computeFault.
_NOVA_FAULT_NAMES = {
    400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 405: "badMethod",
    409: "conflictingRequest", 413: "overLimit", 415: "badMediaType", 429: "overLimit",
    501: "notImplemented", 503: "serviceUnavailable",
}
_KEYSTONE_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                    409: "Conflict", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str  # below the cloud's prefix, without the query: "/compute/v2.1/servers"
    query_string: str
    headers: Mapping[str, str]
    body: bytes
    base_url: str  # "http://127.0.0.1:PORT/<cloud>"
    microversion: tuple[int, int] = (2, 1)  # set by the compute service

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string, keep_blank_values=True)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self, error=None) -> Any:
        """The JSON body; a malformed one is a 400 in the service's own error shape."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise (error or nova_error)(400, "Malformed request body") from None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-able, or None for no body
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


class ApiError(Exception):
    """An error answer; `body` is already in the shape of the service that raised it."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(f"{status}: {body}")
        self.response = Response(status, body, dict(headers or {}))


def nova_error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    name = _NOVA_FAULT_NAMES.get(status, "computeFault")
    return ApiError(status, {name: {"code": status, "message": message}}, headers)


def neutron_error(status: int, kind: str, message: str) -> ApiError:
    return ApiError(status, {"NeutronError": {"type": kind, "message": message, "detail": ""}})


def keystone_error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    title = _KEYSTONE_TITLES.get(status, "Error")
    return ApiError(status, {"error": {"code": status, "title": title, "message": message}}, headers)


def glance_error(status: int, message: str) -> ApiError:
    # Glance answers errors as webob text; its JSON form carries the same title and explanation.
    title = {400: "Bad Request", 404: "Not Found", 409: "Conflict"}.get(status, "Error")
    return ApiError(status, {"code": status, "title": title, "message": message})


def isotime(epoch: float | None, *, micro: bool = False) -> str | None:
    """Timestamps as the APIs print them: "2024-05-01T12:00:00Z" (micro: no zone, microseconds)."""
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") if micro else moment.strftime("%Y-%m-%dT%H:%M:%SZ")

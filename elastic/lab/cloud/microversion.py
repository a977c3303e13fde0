"""Nova's microversion negotiation: which version a request asked for, the headers a reply
carries, and the version documents with the cloud's own maximum."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from elastic.lab.cloud.messages import ApiError, Request, Response, nova_error

MIN_VERSION = (2, 1)
_VERSION = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


def text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def requested(req: Request, maximum: tuple[int, int]) -> tuple[int, int]:
    """The version a request asks for. OpenStack-API-Version wins over the legacy
    X-OpenStack-Nova-API-Version, as in Nova; no header means the minimum, 2.1."""
    value = None
    modern = req.header("OpenStack-API-Version")
    if modern:
        for part in modern.split(","):
            service, _, version = part.strip().partition(" ")
            if service.lower() == "compute":
                value = version.strip()
    if value is None:
        value = (req.header("X-OpenStack-Nova-API-Version") or "").strip() or None
    if value is None:
        return MIN_VERSION
    if value.lower() == "latest":
        return maximum
    match = _VERSION.match(value)
    if not match:
        raise nova_error(400, f"API Version String {value} is of invalid format. Must be of format MajorNum.MinorNum.")
    version = (int(match.group(1)), int(match.group(2)))
    if not MIN_VERSION <= version <= maximum:
        raise nova_error(406, f"Version {value} is not supported by the API. Minimum is {text(MIN_VERSION)} "
                              f"and maximum is {text(maximum)}.")
    return version


def headers(version: tuple[int, int]) -> dict[str, str]:
    return {"OpenStack-API-Version": f"compute {text(version)}", "X-OpenStack-Nova-API-Version": text(version),
            "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}


def versioned(maximum_of: Callable[[object], tuple[int, int]]):
    """Wrap a compute handler: negotiate the version into req.microversion, and add the version
    headers to every answer, errors included (as Nova does)."""

    def wrap(handler):
        @functools.wraps(handler)
        def run(cloud, req: Request, **params) -> Response:
            maximum = maximum_of(cloud)
            try:
                req.microversion = requested(req, maximum)
            except ApiError as error:
                error.response.headers.update(headers(MIN_VERSION))
                raise
            try:
                response = handler(cloud, req, **params)
            except ApiError as error:
                error.response.headers.update(headers(req.microversion))
                raise
            response.headers.update(headers(req.microversion))
            return response
        return run
    return wrap


def version_entry(base: str, maximum: tuple[int, int]) -> dict:
    return {
        "id": "v2.1", "status": "CURRENT", "version": text(maximum), "min_version": text(MIN_VERSION),
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": f"{base}/v2.1/"},
                  {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    }

"""Path templates such as "/servers/{id}" matched to handlers, each with the endpoint label the
request log counts by."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    label: str
    handler: Callable[..., Any]
    auth: bool = True  # version documents are served without a token


def route(method: str, path: str, handler: Callable[..., Any], *, label_path: str | None = None,
          auth: bool = True) -> Route:
    """`path` is below the cloud's prefix; the label uses `label_path` (default `path`)."""
    escaped = re.escape(path).replace(r"\{", "{").replace(r"\}", "}")
    regex = "^" + _PARAM.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", escaped) + "/?$"
    return Route(method, re.compile(regex), f"{method} {label_path or path}", handler, auth)


class Router:
    def __init__(self, routes: list[Route]):
        self._routes = routes

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, params, path_known): path_known without a route means a wrong method (405)."""
        path_known = False
        for candidate in self._routes:
            found = candidate.pattern.match(path)
            if found:
                if candidate.method == method:
                    return candidate, found.groupdict(), True
                path_known = True
        return None, {}, path_known

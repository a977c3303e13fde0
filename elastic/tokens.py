"""A Keystone token (with its service catalog: the endpoints) shared by the runs on one controller.

Every Slurm program is a short process; without this each one logs in again (Keystone's version
discovery and a POST /v3/auth/tokens) before its first real request. keystoneauth can hand out its
authentication state and take it back (`get_auth_state` / `set_auth_state`, a JSON string of the
token and its body, the catalog included) and names the auth options it came from with
`get_cache_id()` (a hash, credentials included, never the credentials themselves). This module
keeps those states in `state_dir/tokens.json`:

- mode 0600: the file holds bearer tokens; its contents never reach a log or an error message;
- a state is used only while it expires more than REFRESH_BEFORE from now: a run that starts
  later logs in and saves the new token (keystoneauth itself re-authenticates once on a 401, so
  a revoked token costs one refused request);
- advice only: a missing, unreadable, broken or wrongly-owned file is ignored with a warning that
  names the file, and the run logs in as before.

Beside each token the services' version discovery documents are kept (`discovery`: URL -> the
versions a GET of that endpoint answered, what keystoneauth caches per session): a run that uses
a cached token then sends no discovery request either, and learns the compute API's microversion
range from the document, as the run that fetched it did. They go with the token: a new token (a
new entry) starts without them and the run that got it fetches and keeps them again.

The plugin is duck-typed (any keystoneauth identity plugin), so this module imports neither
keystoneauth nor openstacksdk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elastic import private_files
from elastic.errors import ElasticError
from elastic.locks import exclusive_lock

# A cached token is used only if it stays valid this long after the run starts: longer than a
# run lasts (a resume waits up to timeouts.boot) would be better still, but keystoneauth renews
# a token that is about to expire on its own.
REFRESH_BEFORE = 300.0
MODE = private_files.MODE
LOCK_TIMEOUT = 1.0


def usable(expires_at: float | None, now: float, margin: float = REFRESH_BEFORE) -> bool:
    """Is a token expiring at `expires_at` good for a run starting at `now`?"""
    return expires_at is not None and expires_at - now > margin


def _expiry(plugin: Any) -> float | None:
    expires = getattr(getattr(plugin, "auth_ref", None), "expires", None)
    if not isinstance(expires, dt.datetime):
        return None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)
    return expires.timestamp()


class TokenCache:
    """Keystone auth states by the plugin's cache id, in one 0600 JSON file."""

    def __init__(self, path: Path, *, clock: Callable[[], float], warn: Callable[[str], None] = lambda message: None):
        self.path = path
        self._clock = clock
        self._warn = warn

    def load(self, plugin: Any) -> bool:
        """Install a cached, still valid state into `plugin`; True if one was installed."""
        key = _cache_id(plugin)
        if key is None:
            return False
        entry = self._read().get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("state"), str):
            return False
        expires = entry.get("expires")
        if not isinstance(expires, (int, float)) or not usable(float(expires), self._clock()):
            return False
        try:
            plugin.set_auth_state(entry["state"])
        except (ValueError, KeyError, TypeError, AttributeError):
            self._warn(f"token cache {self.path}: an entry could not be used; logging in")
            with contextlib.suppress(Exception):
                plugin.set_auth_state(None)
            return False
        if not usable(_expiry(plugin), self._clock()):
            plugin.set_auth_state(None)
            return False
        return True

    def save(self, plugin: Any) -> None:
        """Keep the plugin's current state for the next runs (when it has one worth keeping)."""
        key = _cache_id(plugin)
        expires = _expiry(plugin)
        if key is None or not usable(expires, self._clock()):
            return
        try:
            state = plugin.get_auth_state()
        except (ValueError, TypeError, AttributeError):
            return
        if not isinstance(state, str):
            return
        try:
            with exclusive_lock(self.path.with_name(self.path.name + ".lock"), LOCK_TIMEOUT):
                data = self._read()
                now = self._clock()
                data = {k: v for k, v in data.items()
                        if isinstance(v, dict) and isinstance(v.get("expires"), (int, float)) and v["expires"] > now}
                if data.get(key, {}).get("state") == state:
                    return
                data[key] = {"state": state, "expires": expires}
                self._write(data)
        except (OSError, ElasticError) as error:
            self._warn(f"token cache {self.path} not saved: {private_files.reason(error)}")

    def discovery(self, plugin: Any) -> dict[str, Any]:
        """The discovery documents kept with the plugin's cached token (URL -> versions): only for
        the state `load` installed, never for another token."""
        key = _cache_id(plugin)
        entry = self._read().get(key) if key is not None else None
        if not isinstance(entry, dict) or not _same_state(plugin, entry):
            return {}
        found = entry.get("discovery")
        return {url: data for url, data in found.items() if isinstance(url, str)} if isinstance(found, dict) else {}

    def save_discovery(self, plugin: Any, documents: dict[str, Any]) -> None:
        """Keep discovery documents with the plugin's token entry (which `save` wrote)."""
        key = _cache_id(plugin)
        if key is None or not documents:
            return
        try:
            with exclusive_lock(self.path.with_name(self.path.name + ".lock"), LOCK_TIMEOUT):
                data = self._read()
                entry = data.get(key)
                if not isinstance(entry, dict) or not _same_state(plugin, entry):
                    return
                stored = entry.get("discovery")
                known: dict[str, Any] = stored if isinstance(stored, dict) else {}
                merged = {**known, **documents}
                if merged == known:
                    return
                entry["discovery"] = merged
                self._write(data)
        except (OSError, ElasticError, TypeError, ValueError) as error:
            self._warn(f"token cache {self.path} not saved: {private_files.reason(error)}")

    def _read(self) -> dict[str, Any]:
        return private_files.read_mapping(self.path, "tokens", "token cache", self._warn)

    def _write(self, tokens: dict[str, Any]) -> None:
        private_files.write_mapping(self.path, "tokens", tokens)


def _same_state(plugin: Any, entry: dict[str, Any]) -> bool:
    """Does the cached entry hold the token the plugin uses now?"""
    try:
        state = plugin.get_auth_state()
    except (ValueError, TypeError, AttributeError):
        return False
    theirs = entry.get("state")
    return isinstance(state, str) and isinstance(theirs, str) and _token_of(state) == _token_of(theirs) is not None


def _token_of(state: str) -> str | None:
    """The token of a keystoneauth auth state (a JSON string), never logged."""
    try:
        token = json.loads(state).get("auth_token")
    except (ValueError, AttributeError):
        return None
    return token if isinstance(token, str) and token else None


def _cache_id(plugin: Any) -> str | None:
    """keystoneauth's key for these credentials; None (no caching) for a plugin that has none:
    the base plugin raises NotImplementedError, and token/noauth plugins lack the method."""
    try:
        key = plugin.get_cache_id()
    except (NotImplementedError, AttributeError, TypeError):
        return None
    return key if isinstance(key, str) and key else None

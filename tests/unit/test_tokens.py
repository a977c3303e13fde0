"""The Keystone token cache (elastic.tokens) with a stand-in for a keystoneauth identity plugin."""

from __future__ import annotations

import datetime as dt
import json
import stat

import pytest

from elastic.tokens import REFRESH_BEFORE, TokenCache, usable

NOW = 1_800_000_000.0


class AuthRef:
    def __init__(self, expires: float):
        self.expires = dt.datetime.fromtimestamp(expires, tz=dt.UTC)


class Plugin:
    """What TokenCache uses of keystoneauth's BaseIdentityPlugin."""

    def __init__(self, cache_id: str | None = "id-1", token: str | None = None, expires: float | None = None):
        self.cache_id = cache_id
        self.auth_ref = AuthRef(expires) if token and expires else None
        self.token = token

    def get_cache_id(self) -> str | None:
        return self.cache_id

    def get_auth_state(self) -> str | None:
        if self.auth_ref is None:
            return None
        body = {"token": {"expires_at": self.auth_ref.expires.isoformat()}}
        return json.dumps({"auth_token": self.token, "body": body})

    def set_auth_state(self, data: str | None) -> None:
        if not data:
            self.auth_ref, self.token = None, None
            return
        state = json.loads(data)
        self.token = state["auth_token"]
        self.auth_ref = AuthRef(dt.datetime.fromisoformat(state["body"]["token"]["expires_at"]).timestamp())


def test_a_token_is_usable_only_well_before_it_expires():
    """REFRESH_BEFORE seconds before expiry a new run logs in again."""
    assert usable(NOW + REFRESH_BEFORE + 1, NOW)
    assert not usable(NOW + REFRESH_BEFORE - 1, NOW)
    assert not usable(None, NOW)


def test_a_saved_token_is_loaded_by_the_next_run_and_the_file_is_0600(tmp_path):
    """save() then load() on a fresh plugin with the same options installs the same token."""
    cache = TokenCache(tmp_path / "tokens.json", clock=lambda: NOW)
    cache.save(Plugin(token="tok-A", expires=NOW + 3600))
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    fresh = Plugin()
    assert cache.load(fresh)
    assert fresh.token == "tok-A"


def test_other_auth_options_get_no_token(tmp_path):
    """Another cache id (other credentials, project, cloud) finds nothing; no id: no caching."""
    cache = TokenCache(tmp_path / "tokens.json", clock=lambda: NOW)
    cache.save(Plugin(token="tok-A", expires=NOW + 3600))
    assert not cache.load(Plugin(cache_id="id-2"))
    cache.save(Plugin(cache_id=None, token="tok-B", expires=NOW + 3600))
    assert "tok-B" not in (tmp_path / "tokens.json").read_text()


def test_a_token_about_to_expire_is_neither_saved_nor_loaded(tmp_path):
    """A token with less than REFRESH_BEFORE left is useless to the next run."""
    now = [NOW]
    cache = TokenCache(tmp_path / "tokens.json", clock=lambda: now[0])
    cache.save(Plugin(token="tok-A", expires=NOW + 3600))
    now[0] = NOW + 3600 - REFRESH_BEFORE + 1
    plugin = Plugin()
    assert not cache.load(plugin)
    assert plugin.auth_ref is None
    cache.save(Plugin(cache_id="id-2", token="tok-B", expires=now[0] + 10))
    assert "tok-B" not in (tmp_path / "tokens.json").read_text()


@pytest.mark.parametrize("content", ["{broken", "[]", '{"tokens": 3}', '{"tokens": {"id-1": {"state": 5}}}',
                                     '{"tokens": {"id-1": {"state": "not json", "expires": 1e12}}}'])
def test_a_broken_file_is_ignored(tmp_path, content):
    """Nothing usable: load() says no and the plugin is left to log in; save() rewrites the file."""
    path = tmp_path / "tokens.json"
    path.write_text(content)
    path.chmod(0o600)
    warnings: list[str] = []
    cache = TokenCache(path, clock=lambda: NOW, warn=warnings.append)
    plugin = Plugin()
    assert not cache.load(plugin)
    assert plugin.auth_ref is None
    cache.save(Plugin(token="tok-A", expires=NOW + 3600))
    assert cache.load(Plugin())
    assert all("tok-A" not in w for w in warnings)


def test_a_file_others_may_read_is_not_trusted(tmp_path):
    """Group or world bits on the file: ignored with a warning naming the file, not its contents."""
    path = tmp_path / "tokens.json"
    cache = TokenCache(path, clock=lambda: NOW, warn=(warnings := []).append)
    cache.save(Plugin(token="tok-A", expires=NOW + 3600))
    path.chmod(0o640)
    assert not cache.load(Plugin())
    assert warnings and str(path) in warnings[0] and "tok-A" not in warnings[0]


def test_a_cache_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path):
    """A file where the state dir should be: save() warns; nothing raises."""
    (tmp_path / "file").write_text("")
    warnings: list[str] = []
    cache = TokenCache(tmp_path / "file" / "tokens.json", clock=lambda: NOW, warn=warnings.append)
    cache.save(Plugin(token="tok-A", expires=NOW + 3600))
    assert not cache.load(Plugin())
    assert warnings and all("tok-A" not in w for w in warnings)


def test_discovery_documents_go_with_their_token(tmp_path):
    """save_discovery() keeps them beside the saved token; a run that loads that token gets them;
    another token never does, and a new token starts without them."""
    cache = TokenCache(tmp_path / "tokens.json", clock=lambda: NOW)
    first = Plugin(token="tok-A", expires=NOW + 3600)
    cache.save(first)
    documents = {"http://nova.example/v2.1": [{"id": "v2.1", "status": "CURRENT", "version": "2.96"}]}
    cache.save_discovery(first, documents)
    fresh = Plugin()
    assert cache.load(fresh) and cache.discovery(fresh) == documents
    assert cache.discovery(Plugin(token="tok-B", expires=NOW + 3600)) == {}
    renewed = Plugin(token="tok-B", expires=NOW + 7200)
    cache.save(renewed)
    assert cache.discovery(renewed) == {}
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600

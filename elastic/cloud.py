"""The only module that talks to OpenStack (through openstacksdk's proxy layer).

One `OpenStackCloud` per configured cloud. It returns our own small value types (`Server`,
`Flavor`, `Limits`) and turns every SDK or keystoneauth exception into a `CloudError` with a
kind, once, here. It makes no decisions and no retries: the power flows decide what a kind means.
openstacksdk is imported lazily: it costs ~0.4 s and ~900 modules, which `--help`, config checks
and hostlist work should not pay.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from elastic.config import META_CLUSTER, META_NODE, META_POOL, CloudConfig
from elastic.errors import CloudError, CloudErrorKind
from elastic.lookups import KINDS as STORED_KINDS, LookupCache
from elastic.pacing import Pacer
from elastic.tokens import TokenCache

BUILDING = "BUILD"
ACTIVE = "ACTIVE"
ERROR = "ERROR"

# create_server's attributes -> (Nova's key, outside the "server" object), as openstacksdk's Server
# resource sends them (its Body names and _prepare_request).
_CREATE_BODY = {
    "name": ("name", False), "flavor_id": ("flavorRef", False), "image_id": ("imageRef", False),
    "networks": ("networks", False), "metadata": ("metadata", False), "key_name": ("key_name", False),
    "user_data": ("user_data", False), "availability_zone": ("availability_zone", False),
    "security_groups": ("security_groups", False), "block_device_mapping": ("block_device_mapping_v2", False),
    "scheduler_hints": ("OS-SCH-HNT:scheduler_hints", True),
}
# Above this many names, listing all servers and filtering here is cheaper than a huge regex.
_NAME_FILTER_MAX = 40
# A name that may be an id (a UUID, with or without dashes): looked up as an id first.
_ID_LIKE = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.IGNORECASE)
# How messages name a resource kind where it is not the word itself.
_WORDS = {"keypair": "key pair"}
# Nova's server-group policies; the soft ones exist from compute API 2.15 (Mitaka) only.
SERVER_GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")
_SOFT_POLICIES_FROM = "2.15"


# One address of a server, as Nova lists it under its network's name. Old clouds omit the type.
Address = TypedDict("Address", {"addr": str, "version": int, "OS-EXT-IPS:type": str,
                                "OS-EXT-IPS-MAC:mac_addr": str}, total=False)


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    status: str
    cloud: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    addresses: Mapping[str, list[Address]] = field(default_factory=dict)
    task_state: str | None = None
    created: float | None = None  # epoch seconds
    fault: str | None = None
    fault_kind: CloudErrorKind | None = None  # set when status is ERROR

    @property
    def node(self) -> str | None:
        return self.metadata.get(META_NODE)

    @property
    def pool(self) -> str | None:
        return self.metadata.get(META_POOL)

    @property
    def deleting(self) -> bool:
        return self.task_state == "deleting" or self.status in ("DELETED", "SOFT_DELETED")

    def fixed_address(self, network: str | None = None) -> str | None:
        return self._address("fixed", network)

    def floating_address(self) -> str | None:
        return self._address("floating", None)

    def _address(self, kind: str, network: str | None) -> str | None:
        for net, entries in self.addresses.items():
            if network is not None and net != network:
                continue
            for entry in entries:
                # Old clouds omit the type; an untyped address counts as fixed.
                if entry.get("OS-EXT-IPS:type", "fixed") == kind and entry.get("version", 4) == 4:
                    return entry.get("addr")
        return None


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int  # MB
    disk: int


@dataclass(frozen=True)
class Limits:
    instances: int
    instances_used: int
    cores: int
    cores_used: int
    ram: int
    ram_used: int
    # Nova's server-group quotas (-1: unlimited); members are counted per group.
    server_groups: int = -1
    server_groups_used: int = 0
    server_group_members: int = -1


@dataclass(frozen=True)
class BootRequest:
    """Everything one create call needs, names already resolved to ids by `resolve_boot`."""

    name: str
    flavor_id: str
    image_id: str
    network_id: str
    metadata: Mapping[str, str]
    key_name: str | None = None
    security_groups: tuple[str, ...] = ()
    user_data: str | None = None  # base64
    availability_zone: str | None = None
    boot_volume_size: int | None = None
    server_group: str | None = None  # a server group's id, passed as the scheduler hint `group`


@dataclass(frozen=True)
class ServerGroup:
    """A Nova server group. Groups carry no metadata: ours are known by their name."""

    id: str
    name: str
    policy: str  # affinity | anti-affinity | soft-affinity | soft-anti-affinity
    members: tuple[str, ...] = ()  # server ids


@dataclass(frozen=True)
class FloatingIp:
    """One of our floating IPs (its description carries our mark, `floating_ip_mark`)."""

    id: str
    address: str
    cloud: str
    node: str  # the node it was made for, from the mark
    port_id: str | None = None  # None: not associated (Neutron's answer once its port is gone)
    server_id: str | None = None  # the device of its port; None when unattached or the port is gone
    created: float | None = None  # epoch seconds (Neutron's created_at)
    status: str = ""  # ACTIVE | DOWN | ERROR

    @property
    def detached(self) -> bool:
        return self.port_id is None


@dataclass(frozen=True)
class BootTarget:
    flavor_id: str
    image_id: str
    network_id: str
    # Some id came from an earlier run's look-up (state_dir/lookups.json), not confirmed in this
    # run: a create that the cloud refuses because that id is gone calls for resolve_boot(fresh=True).
    cached: bool = False


class Cloud(Protocol):
    """What the flows need from one cloud; `OpenStackCloud` and `elastic.testing.MemoryCloud`."""

    name: str

    def list_servers(self, cluster: str, names: Collection[str] | None = None) -> list[Server]: ...
    def create_server(self, request: BootRequest) -> Server: ...
    def delete_server(self, server_id: str) -> None: ...
    def resolve_boot(self, flavor: str, image: str, network: str, fresh: bool = False) -> BootTarget: ...
    def attach_floating_ip(self, server: Server, external_network: str) -> str: ...
    def release_floating_ips(self, server_id: str) -> None: ...
    def list_floating_ips(self, cluster: str) -> list[FloatingIp]: ...
    def delete_floating_ip(self, ip_id: str) -> None: ...
    def flavor(self, name: str) -> Flavor: ...
    def find_keypair(self, name: str) -> None: ...
    def limits(self) -> Limits: ...
    def create_server_group(self, name: str, policy: str) -> ServerGroup: ...
    def list_server_groups(self) -> list[ServerGroup]: ...
    def delete_server_group(self, group_id: str) -> None: ...
    def probe(self, timeout: float) -> None: ...


_SDK_IMPORT = threading.Lock()


def import_sdk() -> None:
    """Import openstacksdk (and keystoneauth, requests), one thread at a time. Its packages import
    each other in cycles: two clouds connecting at once in their own threads, each importing it
    first, can meet Python's import deadlock detection (_DeadlockError on openstack.compute.v2)."""
    with _SDK_IMPORT:
        import openstack  # noqa: F401


def is_ours(server_metadata: Mapping[str, str], cluster: str) -> bool:
    return server_metadata.get(META_CLUSTER) == cluster


# Floating IPs carry no metadata: Neutron's `description` (the standard-attr-description extension,
# Mitaka and later, 255 characters) marks ours. Cluster names cannot hold a space (config.Name) and
# node names never do, so the mark reads back unambiguously; anything else (a human's description,
# another cluster's mark, none at all) is not ours and never touched.
_MARK = re.compile(r"elastic cluster=(?P<cluster>[A-Za-z0-9][A-Za-z0-9_.-]{0,62}) node=(?P<node>[^\s]{1,128})")


def floating_ip_mark(cluster: str, node: str) -> str:
    """The description of a floating IP we create for `node`."""
    return f"elastic cluster={cluster} node={node}"


def floating_ip_owner(description: str | None) -> tuple[str, str] | None:
    """(cluster, node) from one of our marks, or None for any other description."""
    found = _MARK.fullmatch(description or "")
    return (found["cluster"], found["node"]) if found else None


class OpenStackCloud:
    """One configured cloud. Thread-safe after `connect()`, which touches the SDK's proxies once
    before threads use them (openstack-notes.md in the shared docs, "Threads")."""

    def __init__(self, name: str, config: CloudConfig, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 pacer: Pacer | None = None, tokens: TokenCache | None = None, lookups: LookupCache | None = None):
        self.name = name
        self._tokens = tokens  # Keystone tokens shared by the runs on this controller (state_dir)
        self._lookups = lookups  # flavor, image and network ids that earlier runs looked up (state_dir)
        self._scope: str | None = None  # this cloud and project, as the look-up cache knows them
        self._from_store: set[tuple[str, str]] = set()  # look-ups answered by the cache, not the cloud
        self._proxies: dict[str, Any] = {}
        self._saved_auth: Any = None  # the keystoneauth AccessInfo last kept in the token cache
        self._config = config
        self._clock = clock
        self._conn: Any = None
        self._connect_lock = threading.Lock()
        self._half_connected: Any = None
        # Adaptive pacing (AIMD, elastic.pacing): openstacksdk's own rate_limit raises at connect
        # since 4.7, so we pace ourselves; wiring passes a pacer shared with the other runs.
        self._limiter = pacer or Pacer(name, ceiling=config.rate_ceiling, clock=clock, sleep=sleep)
        self._cache: dict[tuple[str, str], Any] = {}
        self._marks_floating_ips = True  # False once Neutron refused a description (pre-Mitaka)

    # ---- connection --------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> None:
        """Authenticate and discover the endpoints, each request waiting at most `timeout` seconds
        (api_timeout when None); later requests wait api_timeout."""
        with self._connect_lock:
            if self._conn is not None:
                return
            with self._translated("connect"):
                # A connect that failed half-way is resumed, not restarted: the token and the
                # endpoints already discovered are kept (under a 50 % 5xx rate, six requests in a
                # row rarely all succeed, but each one eventually does).
                if self._half_connected is None:
                    self._half_connected = self._build_connection()
                conn = self._half_connected
                # keystoneauth reads Session.timeout on every request.
                conn.session.timeout = float(timeout if timeout is not None else self._config.api_timeout)
                # A token an earlier run got (and its catalog) spares Keystone's discovery and login,
                # and the discovery documents kept with it the services' version discovery.
                cached = self._tokens is not None and self._tokens.load(conn.session.auth)
                if cached:
                    self._recall_discovery(conn)
                # Authenticate and build the compute proxy once, before any worker thread uses it;
                # network and image only when a call needs them (_proxy), under the same lock.
                conn.authorize()
                if self._tokens is not None and not cached:
                    self._tokens.save(conn.session.auth)
                self._saved_auth = conn.session.auth.auth_ref
                endpoint = conn.compute.get_endpoint()
                # Compute's version discovery (the microversion of every servers call) once, here:
                # threads that list and delete at once would each fetch it.
                from openstack.compute.v2.server import Server as SdkServer

                SdkServer._get_microversion(conn.compute)
                conn.session.timeout = float(self._config.api_timeout)
                # Names resolve per project: a cached id is only used for the same project on the
                # same compute endpoint.
                self._scope = "|".join((self.name, str(getattr(self._saved_auth, "project_id", None) or ""),
                                        str(endpoint or "")))
                self._keep_discovery(conn)
                self._conn, self._half_connected = conn, None

    def close(self) -> None:
        """This run is done with the cloud: its heartbeat leaves the shared pacing file, so a run
        starting now gets the cloud's whole rate instead of sharing it with a finished one."""
        self._limiter.close()

    def probe(self, timeout: float) -> None:
        """Is the cloud answering? Keystone (unless a cached token is still valid) and compute's
        discovery, `timeout` seconds each. A connected cloud answered already."""
        self.connect(timeout)

    def _build_connection(self) -> Any:
        import_sdk()
        import openstack
        from openstack.config import loader

        for what, path in (("clouds.yaml", self._config.clouds_yaml), ("secure.yaml", self._config.secure_yaml)):
            if path is not None and not path.is_file():
                raise CloudError(CloudErrorKind.CONFIG, f"{what} {path} is not a readable file", cloud=self.name)
        # Under slurmctld there is no HOME and the cwd is arbitrary: name the files, ignore OS_* vars.
        config = loader.OpenStackConfig(
            config_files=[str(self._config.clouds_yaml)],
            secure_files=[str(self._config.secure_yaml)] if self._config.secure_yaml else [],
            vendor_files=[],
            load_envvars=False,
        )
        kwargs: dict[str, Any] = {"api_timeout": self._config.api_timeout}
        if self._config.region:
            kwargs["region_name"] = self._config.region
        region = config.get_one(cloud=self._config.cloud or self.name, **kwargs)
        return openstack.connection.Connection(config=region)

    def _recall_discovery(self, conn: Any) -> None:
        """Put the discovery documents kept with the cached token into the session's discovery
        cache (keystoneauth's Session(discovery_cache=...), URL -> Discover), as if this run had
        fetched them: keystoneauth and the SDK then read endpoints and microversions from them."""
        if self._tokens is None:
            return
        from keystoneauth1 import discover

        cache = getattr(conn.session, "_discovery_cache", None)
        if not isinstance(cache, dict):
            return
        for url, versions in self._tokens.discovery(conn.session.auth).items():
            if url not in cache and isinstance(versions, list):
                # A Discover is its URL and the versions its GET answered (keystoneauth's
                # Discover.__init__ sets exactly these two and fetches the second).
                remembered = discover.Discover.__new__(discover.Discover)
                remembered._url = url
                remembered._data = versions
                try:  # a keystoneauth whose Discover holds more than that: discover as before
                    remembered.version_data(reverse=True)
                except Exception:  # noqa: BLE001 - anything here only means "fetch it"
                    continue
                cache[url] = remembered

    def _keep_discovery(self, conn: Any) -> None:
        """Keep this session's discovery documents with the token, for the next runs."""
        if self._tokens is None:
            return
        cache = getattr(conn.session, "_discovery_cache", None)
        if not isinstance(cache, dict):
            return
        documents = {}
        for url, found in list(cache.items()):
            try:
                documents[url] = found.raw_version_data(allow_experimental=True, allow_deprecated=True,
                                                        allow_unknown=True)
            except (AttributeError, TypeError):
                continue
        self._tokens.save_discovery(conn.session.auth, documents)

    @property
    def _sdk(self) -> Any:
        if self._conn is None:
            self.connect()
        return self._conn

    def _proxy(self, service: str) -> Any:
        """conn.network or conn.image, built once under the connect lock (proxies are not built
        thread-safely): a suspend without floating IPs never pays their endpoint discovery."""
        conn = self._sdk
        if service not in self._proxies:
            with self._connect_lock:
                if service not in self._proxies:
                    proxy = getattr(conn, service)
                    proxy.get_endpoint()
                    self._proxies[service] = proxy
                    self._keep_discovery(conn)
        return self._proxies[service]

    # ---- servers -----------------------------------------------------------------------------

    def list_servers(self, cluster: str, names: Collection[str] | None = None) -> list[Server]:
        """Our cluster's servers, optionally only those named in `names` (exact match)."""
        query: dict[str, Any] = {}
        if names is not None and len(names) <= _NAME_FILTER_MAX:
            if not names:
                return []
            # Nova's name filter is a regex search: anchor it, and still compare exactly below.
            query["name"] = "^(" + "|".join(_regex_escape(n) for n in sorted(names)) + ")$"
        with self._translated("list servers"):
            raw = self._server_dicts(query)
        wanted = set(names) if names is not None else None
        servers = []
        for item in raw:
            metadata = item.get("metadata")
            metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
            # Old clouds drop unknown filters silently: ownership is always confirmed here.
            if not is_ours(metadata, cluster):
                continue
            if wanted is not None and item.get("name") not in wanted:
                continue
            servers.append(self._server(item, metadata))
        return servers

    def _server_dicts(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        """GET /servers/detail through the SDK's session (its auth, endpoint and microversion),
        every page, as JSON: building an SDK Resource per server costs ~2 ms each, which at 1,000
        servers made every poll of a resume two seconds late. Errors are the SDK's own
        (raise_from_response), so classification is unchanged."""
        proxy = self._sdk.compute  # connected first: openstacksdk is imported under import_sdk's lock
        from openstack.compute.v2.server import Server as SdkServer

        return self._nova_pages(proxy, "/servers/detail", "servers", query, SdkServer._get_microversion(proxy))

    def _nova_pages(self, proxy: Any, uri: str | None, key: str, query: dict[str, Any],
                    microversion: Any = None) -> list[dict[str, Any]]:
        """Every page of a Nova list (`key`: "servers", "flavors") as JSON dicts, through the proxy's session."""
        from urllib.parse import parse_qs, urljoin, urlsplit

        from openstack import exceptions as sdk

        what = key[:-1]
        params: dict[str, Any] = dict(query)
        items: list[dict[str, Any]] = []
        markers: set[str] = set()
        while uri:
            self._limiter.wait()
            response = proxy.get(uri, headers={"Accept": "application/json"}, params=params,
                                 microversion=microversion)
            sdk.raise_from_response(response)
            data = response.json()
            page = data.get(key) if isinstance(data, dict) else None
            if not isinstance(page, list):
                raise sdk.SDKException(f"the {what} list has no '{key}' list")
            items += [item for item in page if isinstance(item, dict)]
            # Nova pages with <key>_links rel=next (its max_limit, 1,000 by default).
            href = next((link.get("href") for link in data.get(f"{key}_links") or []
                         if isinstance(link, dict) and link.get("rel") == "next" and link.get("href")), None)
            if not href or not page:
                break
            parts = urlsplit(href)
            params = {name: values[-1] for name, values in parse_qs(parts.query).items()}
            marker = str(params.get("marker"))
            if marker in markers:
                raise sdk.SDKException(f"endless pagination of the {what} list: the cloud repeats a marker")
            markers.add(marker)
            uri = urljoin(href, parts.path)
        return items

    def create_server(self, request: BootRequest) -> Server:
        attrs: dict[str, Any] = {
            "name": request.name,
            "flavor_id": request.flavor_id,
            "networks": [{"uuid": request.network_id}],
            "metadata": dict(request.metadata),
        }
        if request.boot_volume_size:
            attrs["block_device_mapping"] = [{
                "boot_index": 0, "uuid": request.image_id, "source_type": "image",
                "destination_type": "volume", "volume_size": request.boot_volume_size,
                "delete_on_termination": True,
            }]
            attrs["image_id"] = ""
        else:
            attrs["image_id"] = request.image_id
        for key in ("key_name", "user_data", "availability_zone"):
            value = getattr(request, key)
            if value:
                attrs[key] = value
        if request.security_groups:
            attrs["security_groups"] = [{"name": g} for g in request.security_groups]
        if request.server_group:
            # Sent as OS-SCH-HNT:scheduler_hints beside `server`, as the SDK does; any microversion.
            attrs["scheduler_hints"] = {"group": request.server_group}
        try:
            with self._translated(f"create server {request.name}"):
                self._limiter.wait()
                created_id = self._post_server(attrs)
        except CloudError as error:
            # Nova's 400 for a flavor, image or network it does not know (a config error as ever):
            # named here, so that a flow holding ids an earlier run looked up can look them up again.
            gone = gone_reference(error.message) if error.status == 400 else None
            if gone is not None:
                error.resource = (gone, {"flavor": request.flavor_id, "image": request.image_id,
                                         "network": request.network_id}[gone])
            elif request.server_group and error.kind is CloudErrorKind.NOT_FOUND:
                error.resource = ("server group", request.server_group)
            raise
        # The create reply holds only id, links and adminPass: describe it from what we sent.
        return Server(id=created_id, name=request.name, status=BUILDING, cloud=self.name,
                      metadata=dict(request.metadata), created=self._clock())

    def _post_server(self, attrs: dict[str, Any]) -> str:
        """POST /servers as the SDK's Server resource words it (same keys, same microversion,
        through its session), without building a Resource: 0.8 ms of CPU a create instead of 2.4,
        which a 5,000-node burst on a busy controller feels. Attributes we have no wording for go
        through the SDK as before."""
        proxy = self._sdk.compute
        if set(attrs) - _CREATE_BODY.keys():
            return str(proxy.create_server(**attrs).id)
        from openstack import exceptions as sdk
        from openstack.compute.v2.server import Server as SdkServer

        body: dict[str, Any] = {"server": {}}
        for key, value in attrs.items():
            wire, top_level = _CREATE_BODY[key]
            (body if top_level else body["server"])[wire] = value
        response = proxy.post("/servers", json=body, headers={"Accept": "application/json"},
                              microversion=SdkServer._get_microversion(proxy))
        sdk.raise_from_response(response)
        server = response.json().get("server")
        if not isinstance(server, dict) or not server.get("id"):
            raise sdk.SDKException("the create reply names no server id")
        return str(server["id"])

    def delete_server(self, server_id: str) -> None:
        with self._translated(f"delete server {server_id}"):
            self._limiter.wait()
            self._delete_server(server_id)

    def _delete_server(self, server_id: str) -> None:
        """DELETE /servers/{id} through the SDK's session and microversion, without a Resource
        (half the CPU of compute.delete_server); a server already gone (404) is fine, as with
        its ignore_missing=True."""
        from urllib.parse import quote

        proxy = self._sdk.compute
        from openstack import exceptions as sdk
        from openstack.compute.v2.server import Server as SdkServer

        response = proxy.delete(f"/servers/{quote(server_id, safe='')}", headers={"Accept": "application/json"},
                                microversion=SdkServer._get_microversion(proxy))
        if response.status_code == 404:
            return
        sdk.raise_from_response(response)

    # ---- server groups -----------------------------------------------------------------------

    def create_server_group(self, name: str, policy: str) -> ServerGroup:
        """A Nova server group. The SDK speaks the cloud's format: `policies: [policy]` below 2.64,
        `policy` from 2.64 (it negotiates at most 2.64 for server groups)."""
        action = f"create server group {name}"
        if policy not in SERVER_GROUP_POLICIES:
            raise CloudError(CloudErrorKind.CONFIG, f"{action}: unknown policy {policy!r} "
                             f"(known: {', '.join(SERVER_GROUP_POLICIES)})", cloud=self.name)
        with self._translated(action):
            compute = self._sdk.compute
            if policy.startswith("soft-"):
                from openstack import utils

                # Nova would answer a cryptic schema 400 ("'soft-affinity' is not one of [...]").
                if not utils.supports_microversion(compute, _SOFT_POLICIES_FROM):
                    raise CloudError(CloudErrorKind.CONFIG, f"{action}: policy {policy} needs compute API "
                                     f"{_SOFT_POLICIES_FROM} (Mitaka); this cloud's is older", cloud=self.name)
            self._limiter.wait()
            created = compute.create_server_group(name=name, policy=policy)
        return _server_group(created)

    def list_server_groups(self) -> list[ServerGroup]:
        """The project's server groups; each lists only its members that are not deleted."""
        with self._translated("list server groups"):
            self._limiter.wait()
            return [_server_group(item) for item in self._sdk.compute.server_groups()]

    def delete_server_group(self, group_id: str) -> None:
        """Nova deletes a group that still has members (they run on, in no group); a missing one is fine."""
        with self._translated(f"delete server group {group_id}"):
            self._limiter.wait()
            self._sdk.compute.delete_server_group(group_id, ignore_missing=True)

    # ---- names to ids ------------------------------------------------------------------------

    def resolve_boot(self, flavor: str, image: str, network: str, fresh: bool = False) -> BootTarget:
        """The pool's names as ids. Each look-up is one request through the SDK's session (its
        find_* sends two: a GET by id, then a list) and is kept for the next runs
        (state_dir/lookups.json, elastic.lookups): a run within MAX_AGE sends none. `fresh`: the
        cloud refused a cached id; forget the three answers and ask again. The look-ups left run
        at once (image and network each behind its service's discovery: sequential, they held
        the first create ~0.4 s); an error is the first in the order flavor, image, network."""
        from concurrent.futures import ThreadPoolExecutor

        lookups = (("flavor", flavor, lambda: self._lookup_flavor(flavor)),
                   ("image", image, lambda: self._lookup_image(image)),
                   ("network", network, lambda: self._lookup_network(network)))
        self.connect()  # in this thread first: the workers share the connection
        if fresh:
            for kind, name, _ in lookups:
                self._forget(kind, name)
        missing = [lookup for lookup in lookups if not self._known(lookup[0], lookup[1])]
        if len(missing) > 1:
            with ThreadPoolExecutor(max_workers=len(missing), thread_name_prefix=f"resolve-{self.name}") as pool:
                futures = [pool.submit(self._find, kind, name, lookup) for kind, name, lookup in missing]
            for future in futures:
                future.result()
        flavor_item, image_item, network_item = (self._find(kind, name, lookup) for kind, name, lookup in lookups)
        return BootTarget(flavor_id=flavor_item["id"], image_id=image_item["id"], network_id=network_item["id"],
                          cached=any((kind, name) in self._from_store for kind, name, _ in lookups))

    def flavor(self, name: str) -> Flavor:
        item = self._find("flavor", name, lambda: self._lookup_flavor(name))
        return Flavor(id=item["id"], name=str(item.get("name") or name), vcpus=_count(item.get("vcpus")),
                      ram=_count(item.get("ram")), disk=_count(item.get("disk")))

    def find_keypair(self, name: str) -> None:
        """Raises NOT_FOUND when the project has no key pair of that name."""
        self._find("keypair", name, lambda: self._get_keypair(name))

    def _get_keypair(self, name: str) -> Any:
        """GET /os-keypairs/{name}; None when there is none (find_keypair's ignore_missing=True is
        deprecated in openstacksdk 5 and warns on every call)."""
        from openstack import exceptions as sdk

        try:
            return self._sdk.compute.get_keypair(name)
        except sdk.NotFoundException:
            return None

    def _find(self, kind: str, name: str, lookup: Callable[[], Any]) -> Any:
        """`kind` as in `openstack <kind> list`; every error raised here carries (kind, name).
        Answers are kept for this run, and flavors, images and networks for the next runs too."""
        key = (kind, name)
        if key in self._cache:
            return self._cache[key]
        stored = self._stored(kind, name)
        if stored is not None:
            self._from_store.add(key)
            self._cache[key] = stored
            return stored
        what = _WORDS.get(kind, kind)
        with self._translated(f"find {what} {name}", resource=key):
            self._limiter.wait()
            found = lookup()
        if found is None:
            raise CloudError(CloudErrorKind.NOT_FOUND, f"{what} {name!r} not found", cloud=self.name,
                             resource=key)
        self._cache[key] = found
        if self._lookups is not None and self._scope is not None and kind in STORED_KINDS:
            self._lookups.put(self._scope, kind, name, found)
        return found

    def _known(self, kind: str, name: str) -> bool:
        return (kind, name) in self._cache or self._stored(kind, name) is not None

    def _stored(self, kind: str, name: str) -> dict[str, Any] | None:
        if self._lookups is None or self._scope is None or kind not in STORED_KINDS:
            return None
        return self._lookups.get(self._scope, kind, name)

    def _forget(self, kind: str, name: str) -> None:
        self._cache.pop((kind, name), None)
        if (kind, name) in self._from_store:
            self._from_store.discard((kind, name))
            if self._lookups is not None and self._scope is not None:
                self._lookups.forget(self._scope, kind, name)

    def _lookup_flavor(self, name: str) -> dict[str, Any] | None:
        """One GET /flavors/detail (every page): the flavor whose id is `name`, else the one so
        named. Nova has no name filter; the detail list carries the vCPUs and RAM quota needs."""
        items = self._nova_pages(self._sdk.compute, "/flavors/detail", "flavors", {})
        item = next((i for i in items if i.get("id") == name), None) or _only_named(items, name, "flavor", self.name)
        if item is None:
            return None
        return {"id": str(item["id"]), "name": str(item.get("name") or name), "vcpus": _count(item.get("vcpus")),
                "ram": _count(item.get("ram")), "disk": _count(item.get("disk"))}

    def _lookup_image(self, name: str) -> dict[str, Any] | None:
        """GET /v2/images?name= (Glance matches exactly); a name that looks like an id is first
        tried as one, as openstacksdk's find_image does."""
        return self._lookup_by_name(self._proxy("image"), "/images", "image", name)

    def _lookup_network(self, name: str) -> dict[str, Any] | None:
        """GET /v2.0/networks?name= (Neutron matches exactly); an id-like name is first tried as an id."""
        return self._lookup_by_name(self._proxy("network"), "/networks", "network", name)

    def _lookup_by_name(self, proxy: Any, uri: str, kind: str, name: str) -> dict[str, Any] | None:
        from urllib.parse import quote

        from openstack import exceptions as sdk

        headers = {"Accept": "application/json"}
        if _ID_LIKE.match(name):
            response = proxy.get(f"{uri}/{quote(name, safe='')}", headers=headers)
            if response.status_code != 404:
                sdk.raise_from_response(response)
                data = response.json()
                # Glance answers the image itself; Neutron wraps it in {"network": ...}.
                item = data.get(kind, data) if isinstance(data, dict) else None
                if isinstance(item, dict) and item.get("id"):
                    return {"id": str(item["id"])}
            self._limiter.wait()
        response = proxy.get(uri, headers=headers, params={"name": name})
        sdk.raise_from_response(response)
        data = response.json()
        items = data.get(f"{kind}s") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise sdk.SDKException(f"the {kind} list has no '{kind}s' list")
        item = _only_named([i for i in items if isinstance(i, dict)], name, kind, self.name)
        return {"id": str(item["id"])} if item is not None else None

    # ---- floating IPs ------------------------------------------------------------------------

    def attach_floating_ip(self, server: Server, external_network: str) -> str:
        """A floating IP on the server's first port, created associated (one call: Neutron never
        shows it unattached) and marked with our cluster and the node; one already on the port is kept."""
        network = self._find("network", external_network, lambda: self._lookup_network(external_network))
        cluster = server.metadata.get(META_CLUSTER)
        with self._translated(f"floating IP for {server.name}"):
            neutron = self._proxy("network")
            ports = list(neutron.ports(device_id=server.id))
            if not ports:
                raise CloudError(CloudErrorKind.BOOT, f"server {server.name} has no port", cloud=self.name,
                                 resource=("server", server.name))
            for existing in neutron.ips(port_id=ports[0].id):
                address: str = existing.floating_ip_address
                return address
            attrs: dict[str, Any] = {"floating_network_id": network["id"], "port_id": ports[0].id}
            if cluster and self._marks_floating_ips:
                attrs["description"] = floating_ip_mark(cluster, server.name)
            self._limiter.wait()
            try:
                ip = neutron.create_ip(**attrs)
            except Exception as exc:
                if "description" not in attrs or not _unrecognized_description(exc):
                    raise
                # A Neutron older than Mitaka has no description: 400 "Unrecognized attribute(s)".
                # Its floating IPs cannot be marked, so reconcile cannot find them if they leak.
                self._marks_floating_ips = False
                del attrs["description"]
                ip = neutron.create_ip(**attrs)
        created: str = ip.floating_ip_address
        return created

    def release_floating_ips(self, server_id: str) -> None:
        # Nova deletes the port with the server, but a floating IP stays allocated to the
        # project (and counts against quota) until it is deleted explicitly.
        with self._translated(f"release floating IPs of {server_id}"):
            for port in self._proxy("network").ports(device_id=server_id):
                for ip in self._proxy("network").ips(port_id=port.id):
                    self._limiter.wait()
                    self._proxy("network").delete_ip(ip, ignore_missing=True)

    def list_floating_ips(self, cluster: str) -> list[FloatingIp]:
        """The project's floating IPs that carry our cluster's mark (confirmed here: Neutron's
        description filter is exact-match only). Each attached one names its port's server: from
        `port_details` (the fip-port-details extension, Rocky and later), else one port look-up."""
        from openstack import exceptions as sdk

        found: list[FloatingIp] = []
        with self._translated("list floating IPs"):
            neutron = self._proxy("network")
            self._limiter.wait()
            # An admin's token sees every project's floating IPs: only this project's are ours.
            project = self._sdk.current_project_id
            items = list(neutron.ips(project_id=project) if project else neutron.ips())
            for item in items:
                owner = floating_ip_owner(item.description)
                if owner is None or owner[0] != cluster:
                    continue
                server_id = None
                if item.port_id:
                    details = item.port_details if isinstance(item.port_details, dict) else None
                    if details is not None and "device_id" in details:
                        server_id = details.get("device_id") or None
                    else:
                        self._limiter.wait()
                        try:
                            server_id = neutron.get_port(item.port_id).device_id or None
                        except sdk.NotFoundException:
                            server_id = None  # the port went meanwhile: the IP is on no server
                found.append(FloatingIp(id=str(item.id), address=str(item.floating_ip_address), cloud=self.name,
                                        node=owner[1], port_id=item.port_id or None, server_id=server_id,
                                        created=_epoch(item.created_at), status=str(item.status or "")))
        return found

    def delete_floating_ip(self, ip_id: str) -> None:
        """Delete one floating IP by id; one already gone is fine."""
        with self._translated(f"delete floating IP {ip_id}"):
            self._limiter.wait()
            self._proxy("network").delete_ip(ip_id, ignore_missing=True)

    # ---- quota -------------------------------------------------------------------------------

    def limits(self) -> Limits:
        with self._translated("limits"):
            absolute = self._sdk.compute.get_limits().absolute
        return Limits(
            instances=int(absolute.instances), instances_used=int(absolute.instances_used or 0),
            cores=int(absolute.total_cores), cores_used=int(absolute.total_cores_used or 0),
            ram=int(absolute.total_ram), ram_used=int(absolute.total_ram_used or 0),
            server_groups=_limit(absolute.server_groups), server_groups_used=int(absolute.server_groups_used or 0),
            server_group_members=_limit(absolute.server_group_members),
        )

    # ---- helpers -----------------------------------------------------------------------------

    def _server(self, item: dict[str, Any], metadata: dict[str, str]) -> Server:
        """One server of a detail list (Nova's JSON), only the fields we use."""
        raw_fault = item.get("fault")
        fault = raw_fault.get("message") if isinstance(raw_fault, dict) else None
        status = str(item.get("status") or "").upper()
        addresses = item.get("addresses")
        return Server(
            id=str(item.get("id")), name=str(item.get("name")), status=status, cloud=self.name, metadata=metadata,
            addresses=dict(addresses) if isinstance(addresses, dict) else {},
            task_state=item.get("OS-EXT-STS:task_state"),
            created=_epoch(item.get("created")), fault=fault,
            fault_kind=classify_fault(fault) if status == ERROR else None,
        )

    @contextmanager
    def _translated(self, action: str, resource: tuple[str, str] | None = None) -> Iterator[None]:
        try:
            yield
            self._keep_new_token()
        except CloudError:
            raise
        except Exception as exc:  # every SDK failure becomes one of our kinds
            error = classify_exception(exc, cloud=self.name, action=action)
            error.resource = resource
            if error.kind is CloudErrorKind.RATE_LIMITED or error.status == 503:
                self._limiter.refused(error.retry_after)  # the cloud asks us to slow down
            raise error from exc


    def _keep_new_token(self) -> None:
        """keystoneauth logs in again on its own (a 401 on a revoked token, an expiring one): keep
        the new token for the next runs too, once."""
        if self._tokens is None or self._conn is None:
            return
        auth = self._conn.session.auth
        current = getattr(auth, "auth_ref", None)
        if current is not None and current is not self._saved_auth:
            self._saved_auth = current
            self._tokens.save(auth)


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _only_named(items: list[dict[str, Any]], name: str, kind: str, cloud: str) -> dict[str, Any] | None:
    """The one item named `name` (None if none); two of that name is the admin's to settle (as
    openstacksdk's find_* refuses with DuplicateResource)."""
    named = [item for item in items if item.get("name") == name and item.get("id")]
    if len(named) > 1:
        raise CloudError(CloudErrorKind.CONFIG, f"more than one {_WORDS.get(kind, kind)} named {name!r}: use its id",
                         cloud=cloud, resource=(kind, name))
    return named[0] if named else None


def _limit(value: Any) -> int:
    """A maximum from /limits; a cloud that does not report it limits nothing we can see."""
    return -1 if value is None else int(value)


def _server_group(item: Any) -> ServerGroup:
    # Below 2.64 Nova shows `policies: [one]` and the SDK's `policy` is None; from 2.64 the reverse.
    policies = item.policies or []
    policy = item.policy or (policies[0] if policies else "")
    return ServerGroup(id=item.id, name=item.name or "", policy=policy, members=tuple(item.member_ids or ()))


def classify_fault(message: str | None) -> CloudErrorKind:
    """An ERROR server's fault: 'No valid host' means the cloud is full, anything else a bad boot."""
    if message and "no valid host" in message.lower():
        return CloudErrorKind.CAPACITY
    return CloudErrorKind.BOOT


def classify_exception(exc: BaseException, *, cloud: str = "", action: str = "") -> CloudError:
    """Map an openstacksdk/keystoneauth/requests exception to a CloudError kind, once."""
    import_sdk()
    import requests
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    prefix = f"{action}: " if action else ""
    chain = list(_chain(exc))
    # keystoneauth raises ConnectTimeout for every timeout, connecting or waiting for the reply.
    if any(isinstance(link, ksa.ConnectTimeout | requests.exceptions.Timeout) for link in chain):
        return CloudError(CloudErrorKind.UNREACHABLE, f"{prefix}no answer in time", cloud=cloud, final=True)
    unreachable = (ksa.ConnectFailure, ksa.ConnectionError, requests.exceptions.ConnectionError)
    if any(isinstance(link, unreachable) for link in chain):
        # keystoneauth reports a reset during version discovery as a DiscoveryFailure (an
        # "auth_url is wrong" message) raised while handling the connection error.
        return CloudError(CloudErrorKind.UNREACHABLE, f"{prefix}cannot connect ({type(exc).__name__})", cloud=cloud)
    # Connection.authorize() re-raises keystoneauth's Unauthorized as a bare SDKException.
    if any(isinstance(link, ksa.Unauthorized) for link in chain):
        return CloudError(CloudErrorKind.AUTH, f"{prefix}authentication failed", cloud=cloud, status=401)
    # A 5xx or 429 during version discovery (or login) is wrapped in a DiscoveryFailure or a bare
    # SDKException: the server's trouble, not a wrong auth_url.
    busy = next((link for link in chain if isinstance(link, ksa.HttpError) and link is not exc
                 and (link.http_status or 0) in (429, *range(500, 600))), None)
    if busy is not None and not isinstance(exc, ksa.HttpError | sdk.HttpException):
        return _classify_status(busy.http_status, _first_line(busy), prefix, cloud, busy.response)
    if any(isinstance(link, ksa.DiscoveryFailure | ksa.EndpointNotFound | sdk.EndpointNotFound | sdk.ConfigException)
           for link in chain):
        return CloudError(CloudErrorKind.CONFIG, f"{prefix}{_first_line(exc)}", cloud=cloud)
    if isinstance(exc, sdk.HttpException):
        detail = _first_line(exc.details or exc.message or exc)
        return _classify_status(exc.status_code, detail, prefix, cloud, exc.response)
    if isinstance(exc, ksa.HttpError):
        return _classify_status(exc.http_status, _first_line(exc), prefix, cloud, exc.response)
    wrapped = next((link for link in chain if isinstance(link, ksa.HttpError)), None)
    if wrapped is not None:
        # Connection.authorize() wraps keystoneauth's client errors in a bare SDKException: a 4xx
        # from Keystone while logging in means the auth settings are wrong.
        return CloudError(CloudErrorKind.CONFIG, f"{prefix}{_first_line(exc)}", cloud=cloud, status=wrapped.http_status)
    return CloudError(CloudErrorKind.TRANSIENT, f"{prefix}{type(exc).__name__}: {_first_line(exc)}", cloud=cloud)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


# Nova's quota refusals: "Quota exceeded for instances", a port quota ("Maximum number of ports
# exceeded"), unified limits ("Project X is over a limit for [Resource servers is over limit ...]");
# Neutron's 409 "OverQuota".
_QUOTA_WORDS = re.compile(r"quota|maximum number of \w+ exceeded|over (a )?limit for", re.IGNORECASE)
_GROUP_NOT_FOUND = re.compile(r"instance group \S+ could not be found", re.IGNORECASE)
# Nova's 400s for a create naming a flavor, image or network it does not know (servers.py: FlavorNotFound,
# ImageNotFound, NetworkNotFound; InvalidBDMImage when booting from a volume).
_REFERENCE_GONE = (("flavor", re.compile(r"invalid flavorref provided", re.IGNORECASE)),
                   ("image", re.compile(r"can not find requested image|failed to get image", re.IGNORECASE)),
                   ("network", re.compile(r"network \S+ could not be found", re.IGNORECASE)))


def gone_reference(message: str) -> str | None:
    """Which of a create's references ("flavor", "image", "network") a refusal says is unknown."""
    return next((kind for kind, pattern in _REFERENCE_GONE if pattern.search(message)), None)


def _classify_status(status: int | None, detail: str, prefix: str, cloud: str, response: Any) -> CloudError:
    retry_after = _retry_after(response)
    quota_words = _QUOTA_WORDS.search(detail) is not None
    if status == 401:
        kind = CloudErrorKind.AUTH
    elif status == 403:
        # Nova answers 403 both for quota and for policy; only the message tells them apart.
        kind = CloudErrorKind.QUOTA if quota_words else CloudErrorKind.AUTH
    elif status == 413:
        # Pre-Juno Nova answered quota with 413 overLimit "Quota exceeded ..." and Retry-After: 0;
        # a 413 without quota words is a rate limit (an old rate-limit middleware or a proxy).
        kind = CloudErrorKind.QUOTA if quota_words else CloudErrorKind.RATE_LIMITED
    elif status == 429:
        kind = CloudErrorKind.RATE_LIMITED
    elif status == 404:
        kind = CloudErrorKind.NOT_FOUND
    elif status == 409:
        # Neutron reports an exhausted floating IP quota as 409 OverQuota.
        kind = CloudErrorKind.QUOTA if quota_words else CloudErrorKind.CONFLICT
    elif status == 400:
        # Nova answers a scheduler hint naming a server group it does not know with a 400
        # (InstanceGroupNotFound); the group is missing, not our configuration wrong.
        kind = CloudErrorKind.NOT_FOUND if _GROUP_NOT_FOUND.search(detail) else CloudErrorKind.CONFIG
    else:
        kind = CloudErrorKind.TRANSIENT  # 5xx, and whatever else we cannot place
    if kind is CloudErrorKind.QUOTA:
        retry_after = None  # waiting does not free quota
    return CloudError(kind, f"{prefix}{detail}", cloud=cloud, status=status, retry_after=retry_after)


def _retry_after(response: Any) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else type(value).__name__


def _unrecognized_description(exc: BaseException) -> bool:
    """Neutron's 400 for a body attribute it does not know (here: no standard-attr-description)."""
    from openstack import exceptions as sdk

    return (isinstance(exc, sdk.BadRequestException)
            and "unrecognized attribute" in str(exc.details or exc.message or exc).lower())


def _regex_escape(name: str) -> str:
    # Nova evaluates the filter with Python's (or the DB's) regex engine; node names are simple,
    # but '.' is legal in them and must not match any character.
    return "".join("\\" + ch if ch in ".^$*+?{}[]\\|()" else ch for ch in name)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

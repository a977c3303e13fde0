"""Nova's /servers: create (validated as Nova validates), show, list with filters and paging,
delete, metadata and the lock/unlock actions, with views that change with the microversion."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import uuid
from typing import Any
from urllib.parse import urlencode

from elastic.lab.cloud.messages import ApiError, Request, Response, isotime, nova_error
from elastic.lab.cloud.model import BootSpec, EmulatedServer
from elastic.lab.cloud.state import CloudState, Conflict, Invalid, NotFound, OverLimit, QuotaExceeded

MAX_USER_DATA = 65535  # Nova's schema limit, on the base64 text
MAX_METADATA_ITEMS = 128
# Nova's accepted list filters; from 2.75 anything else is a 400, before it silently ignored.
LIST_PARAMS = frozenset("""user_id project_id tenant_id launch_index image_ref image kernel_id ramdisk_id hostname
    key_name power_state vm_state task_state host node flavor reservation_id launched_at terminated_at
    availability_zone name display_name description display_description locked_by uuid root_device_name
    config_drive access_ip_v4 access_ip_v6 auto_disk_config progress sort_key sort_dir all_tenants soft_deleted
    deleted status changes-since changes-before ip ip6 created_at block_device_mapping services metadata
    system_metadata info_cache security_groups pci_devices limit marker tags tags-any not-tags not-tags-any
    locked updated_at""".split())


def compute_base(req: Request) -> str:
    return f"{req.base_url}/compute/v2.1"


def _bookmark(req: Request, kind: str, ident: str) -> list[dict[str, str]]:
    return [{"rel": "bookmark", "href": f"{req.base_url}/compute/{kind}/{ident}"}]


def _links(req: Request, server_id: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": f"{compute_base(req)}/servers/{server_id}"}] + _bookmark(req, "servers", server_id)


def addresses(cloud: CloudState, server: EmulatedServer, *,
              info_cache: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The server's addresses from its ports; `info_cache`: as Nova's views show them, from a
    network info cache that may not hold a new floating IP yet (fault floating_ip_cache_lag)."""
    result: dict[str, list[dict[str, Any]]] = {}
    for port in cloud.server_ports(server.id):
        entries = result.setdefault(cloud.networks[port.network_id].name, [])
        entries.append({"version": 4, "addr": port.ip, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": port.mac})
        fip = cloud.floating_ip_for_port(port.id)
        if fip is not None and (not info_cache or cloud.in_nova_cache(fip)):
            entries.append({"version": 4, "addr": fip.address, "OS-EXT-IPS:type": "floating",
                            "OS-EXT-IPS-MAC:mac_addr": port.mac})
    return result


def server_view(cloud: CloudState, req: Request, server: EmulatedServer) -> dict[str, Any]:
    version = req.microversion
    flavor = server.flavor
    if version >= (2, 47):
        flavor_view: dict[str, Any] = {"vcpus": flavor.vcpus, "ram": flavor.ram, "disk": flavor.disk, "ephemeral": 0,
                                       "swap": 0, "original_name": flavor.name, "extra_specs": {}}
    else:
        flavor_view = {"id": flavor.id, "links": _bookmark(req, "flavors", flavor.id)}
    view: dict[str, Any] = {
        "id": server.id, "name": server.name, "status": server.status, "tenant_id": cloud.project_id,
        "user_id": cloud.user_id, "metadata": dict(server.metadata), "hostId": cloud.host_id(server),
        # A server booted from a volume shows its image as "", not null: a Nova quirk.
        "image": {"id": server.image.id, "links": _bookmark(req, "images", server.image.id)} if server.image else "",
        "flavor": flavor_view, "created": isotime(server.created), "updated": isotime(server.updated),
        "addresses": addresses(cloud, server, info_cache=True), "accessIPv4": "", "accessIPv6": "",
        "links": _links(req, server.id), "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": server.availability_zone if server.status == "ACTIVE" else "",
        "config_drive": server.config_drive, "key_name": server.key_name,
        "OS-SRV-USG:launched_at": isotime(server.launched_at, micro=True), "OS-SRV-USG:terminated_at": None,
        "security_groups": [{"name": g} for g in server.security_groups],
        "OS-EXT-STS:task_state": server.task_state, "OS-EXT-STS:vm_state": server.vm_state,
        "OS-EXT-STS:power_state": server.power_state, "os-extended-volumes:volumes_attached": [],
    }
    if server.status in ("BUILD", "ACTIVE"):
        view["progress"] = 100 if server.status == "ACTIVE" else 0
    if server.fault:
        view["fault"] = {"code": server.fault["code"], "created": isotime(server.fault["created"]),
                         "message": server.fault["message"]}
    if version >= (2, 9):
        view["locked"] = server.locked
    if version >= (2, 19):
        view["description"] = server.description
    if version >= (2, 26):
        view["tags"] = list(server.tags)
    if version >= (2, 73):
        view["locked_reason"] = None
    if version >= (2, 96):
        view["pinned_availability_zone"] = None
    return view


# ---- create -----------------------------------------------------------------------------------

def create(cloud: CloudState, req: Request) -> Response:
    body = req.json()
    if not isinstance(body, dict) or not isinstance(body.get("server"), dict):
        raise nova_error(400, "Invalid input for field/attribute server. Value: None. 'server' is a required property")
    spec = _boot_spec(cloud, req, body["server"])
    spec.group = _group_hint(body)
    try:
        server = cloud.create_server(spec)
    except Invalid as exc:
        raise nova_error(400, str(exc)) from None
    except (QuotaExceeded, OverLimit) as exc:
        raise quota_refused(cloud, exc if isinstance(exc, QuotaExceeded) else str(exc)) from None
    reply = {"id": server.id, "links": _links(req, server.id), "OS-DCF:diskConfig": "MANUAL",
             "security_groups": [{"name": g} for g in server.security_groups], "adminPass": secrets.token_urlsafe(9)}
    return Response(202, {"server": reply}, {"Location": f"{compute_base(req)}/servers/{server.id}"})


def quota_refused(cloud: CloudState, over: QuotaExceeded | str) -> ApiError:
    """Nova's quota refusal: 403 forbidden (Juno on); with the fault quota_status 413, pre-Juno's
    413 overLimit with Retry-After: 0 in the header and, as a string, in the body."""
    if cloud.gate.faults.quota_status == 413:
        message = over.legacy_message if isinstance(over, QuotaExceeded) else over
        error = nova_error(413, message, {"Retry-After": "0"})
        error.response.body["overLimit"]["retryAfter"] = "0"
        return error
    return nova_error(403, over.message if isinstance(over, QuotaExceeded) else over)


def _invalid(field: str, value: Any, why: str):
    return nova_error(400, f"Invalid input for field/attribute {field}. Value: {value}. {why}")


def _boot_spec(cloud: CloudState, req: Request, server: dict[str, Any]) -> BootSpec:
    version = req.microversion
    name = server.get("name")
    if name is None:
        raise _invalid("server", server, "'name' is a required property")
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or name != name.strip():
        raise _invalid("name", name, "not a string of 1-255 characters without leading or trailing spaces")
    flavor_ref = server.get("flavorRef")
    if flavor_ref is None:
        raise _invalid("server", server, "'flavorRef' is a required property")
    image_ref = server.get("imageRef")
    image_ref = "" if image_ref is None else str(image_ref)
    if not image_ref:
        _check_boot_volume(cloud, server.get("block_device_mapping_v2"))
    networks = server.get("networks")
    if networks is None and version >= (2, 37):
        raise _invalid("server", server, "'networks' is a required property")
    if isinstance(networks, str):
        if version < (2, 37) or networks not in ("auto", "none"):
            raise _invalid("networks", networks, f"{networks!r} is not of type 'array'")
    elif networks is not None:
        networks = _network_list(networks)
    user_data = server.get("user_data")
    if user_data is not None:
        _check_user_data(user_data)
    metadata = _metadata(cloud, server.get("metadata", {}))
    key_name = server.get("key_name")
    if key_name is not None and not isinstance(key_name, str):
        raise _invalid("key_name", key_name, "not a string")
    groups = server.get("security_groups", [{"name": "default"}])
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("name"), str) for g in groups):
        raise _invalid("security_groups", groups, "must be a list of {'name': ...}")
    for count in ("min_count", "max_count"):
        if str(server.get(count, 1)) != "1":
            raise nova_error(400, f"{count} other than 1 is not supported by this emulator")
    description = server.get("description") if version >= (2, 19) else None
    tags = server.get("tags", []) if version >= (2, 52) else []
    return BootSpec(name=name, flavor_ref=str(flavor_ref), image_ref=image_ref, networks=networks, key_name=key_name,
                    security_groups=[g["name"] for g in groups] or ["default"], user_data=user_data, metadata=metadata,
                    availability_zone=server.get("availability_zone"), config_drive=bool(server.get("config_drive")),
                    description=description, tags=list(tags))


def _group_hint(body: dict[str, Any]) -> str | None:
    """The scheduler hint `group`: Nova reads `os:scheduler_hints`, else `OS-SCH-HNT:scheduler_hints`
    (what openstacksdk sends), both beside `server`; the schema wants a UUID (or a list of them)."""
    hints = body.get("os:scheduler_hints", body.get("OS-SCH-HNT:scheduler_hints"))
    if hints is None:
        return None
    if not isinstance(hints, dict):
        raise _invalid("os:scheduler_hints", hints, f"{hints!r} is not of type 'object'")
    group = hints.get("group")
    if group is None:
        return None
    values = group if isinstance(group, list) else [group]
    for value in values:
        try:
            valid = isinstance(value, str) and bool(uuid.UUID(value))  # oslo's is_uuid_like
        except ValueError:
            valid = False
        if not valid:
            raise _invalid("group", group, f"{group!r} is not valid under any of the given schemas")
    if isinstance(group, list):
        if len(group) != 1:
            raise nova_error(400, "a group hint other than one server group is not supported by this emulator")
        return str(group[0])
    return str(group)


def _check_boot_volume(cloud: CloudState, mappings: Any) -> None:
    boot = next((m for m in mappings or [] if isinstance(m, dict) and str(m.get("boot_index")) == "0"), None)
    if boot is None:
        raise nova_error(400, "Block Device Mapping is Invalid: Boot sequence for the instance and image/block device "
                              "mapping combination is not valid.")
    if boot.get("source_type") == "image" and boot.get("uuid") not in cloud.images:
        # Nova's InvalidBDMImage (block_device.get_bdm_image_metadata), not its ImageNotFound.
        raise nova_error(400, f"Block Device Mapping is Invalid: failed to get image {boot.get('uuid')}.")


def _network_list(networks: Any) -> list[dict[str, str]]:
    if not isinstance(networks, list):
        raise _invalid("networks", networks, "is not of type 'array'")
    result = []
    for entry in networks:
        if not isinstance(entry, dict) or not ({"uuid", "port"} & set(entry)):
            raise _invalid("networks", networks, "each network needs a 'uuid' or a 'port'")
        if "uuid" in entry:
            try:
                uuid.UUID(str(entry["uuid"]))
            except ValueError:
                raise nova_error(400, "Bad networks format: network uuid is not in proper format "
                                      f"({entry['uuid']})") from None
        result.append({k: str(v) for k, v in entry.items() if v is not None})
    return result


def _check_user_data(user_data: Any) -> None:
    if not isinstance(user_data, str):
        raise _invalid("user_data", user_data, "is not of type 'string'")
    if len(user_data) > MAX_USER_DATA:
        raise _invalid("user_data", f"<{len(user_data)} characters>", f"is too long (maximum {MAX_USER_DATA})")
    try:
        base64.b64decode(user_data, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("user_data", user_data[:40], "is not a 'base64'") from None


def _metadata(cloud: CloudState, metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise _invalid("metadata", metadata, "is not of type 'object'")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 255:
            raise _invalid("metadata", key, "keys must be strings of 1-255 characters")
        if not isinstance(value, str):
            raise _invalid(f"metadata.{key}", value, "is not of type 'string'")
        if len(value) > 255:
            raise _invalid(f"metadata.{key}", value[:40] + "...", "is too long (maximum 255)")
    if len(metadata) > MAX_METADATA_ITEMS:
        raise quota_refused(cloud, f"Maximum number of metadata items exceeds {MAX_METADATA_ITEMS}")
    return dict(metadata)


# ---- read, list, delete -----------------------------------------------------------------------

def _get(cloud: CloudState, server_id: str) -> EmulatedServer:
    try:
        return cloud.get_server(server_id)
    except NotFound:
        raise nova_error(404, f"Instance {server_id} could not be found.") from None


def show(cloud: CloudState, req: Request, id: str) -> Response:
    with cloud.lock:
        return Response(200, {"server": server_view(cloud, req, _get(cloud, id))})


def list_brief(cloud: CloudState, req: Request) -> Response:
    return _list(cloud, req, detail=False)


def list_detail(cloud: CloudState, req: Request) -> Response:
    return _list(cloud, req, detail=True)


def _list(cloud: CloudState, req: Request, *, detail: bool) -> Response:
    query = {key: values[-1] for key, values in req.query.items()}
    if req.microversion >= (2, 75):
        unknown = sorted(set(query) - LIST_PARAMS)
        if unknown:
            raise nova_error(400, f"Invalid input for query parameters {unknown[0]}. Value: {query[unknown[0]]}. "
                                  "Additional properties are not allowed")
    with cloud.lock:
        servers = [s for s in cloud.list_servers() if _matches(cloud, s, query, req.microversion)]
        marker = query.get("marker")
        if marker is not None and marker in cloud.deleted_servers and marker not in cloud.servers:
            # A page's last server deleted since: Nova still finds it, and the list goes on after it.
            servers = [s for s in servers if (s.created, s.id) < cloud.deleted_servers[marker]]
            query = {k: v for k, v in query.items() if k != "marker"}
        page, next_marker = paginate(servers, query, cloud.config.max_limit, lambda s: s.id)
        views = [server_view(cloud, req, s) if detail else {"id": s.id, "name": s.name, "links": _links(req, s.id)}
                 for s in page]
    body: dict[str, Any] = {"servers": views}
    if next_marker is not None:
        path = "/servers/detail" if detail else "/servers"
        params = {k: v for k, v in query.items() if k != "marker"} | {"marker": next_marker}
        body["servers_links"] = [{"rel": "next", "href": f"{compute_base(req)}{path}?{urlencode(params)}"}]
    return Response(200, body)


def paginate(items: list, query: dict[str, str], max_limit: int, key) -> tuple[list, str | None]:
    """Nova's limit/marker paging: a next marker whenever a page is full."""
    try:
        limit = min(int(query.get("limit", max_limit)), max_limit)
    except ValueError:
        raise nova_error(400, "limit param must be an integer") from None
    if limit < 0:
        raise nova_error(400, "limit param must be positive")
    marker = query.get("marker")
    if marker is not None:
        index = next((i for i, item in enumerate(items) if key(item) == marker), None)
        if index is None:
            raise nova_error(400, f"marker [{marker}] not found")
        items = items[index + 1:]
    page = items[:limit]
    return page, (key(page[-1]) if page and len(page) == limit else None)


def _matches(cloud: CloudState, server: EmulatedServer, query: dict[str, str], version: tuple[int, int]) -> bool:
    name = query.get("name")
    if name is not None:
        # Nova runs the filter as a database REGEXP: a search, not an exact or anchored match.
        try:
            if not re.search(name, server.name):
                return False
        except re.error:
            return False
    if "status" in query and server.status != query["status"].upper():
        return False
    if "flavor" in query and server.flavor.id != query["flavor"]:
        return False
    if "image" in query and (server.image.id if server.image else "") != query["image"]:
        return False
    if "ip" in query and not any(re.search(query["ip"], p.ip) for p in cloud.server_ports(server.id)):
        return False
    if version >= (2, 26):  # below, tag filters do not exist and are dropped
        tags = set(server.tags)
        for key, test in (("tags", lambda want: want <= tags), ("tags-any", lambda want: bool(want & tags)),
                          ("not-tags", lambda want: not want <= tags), ("not-tags-any", lambda want: not want & tags)):
            if key in query and not test(set(query[key].split(","))):
                return False
    return True


def delete(cloud: CloudState, req: Request, id: str) -> Response:
    try:
        cloud.delete_server(id)
    except NotFound:
        raise nova_error(404, f"Instance {id} could not be found.") from None
    except Conflict as exc:
        raise nova_error(409, str(exc)) from None
    return Response(204)


def action(cloud: CloudState, req: Request, id: str) -> Response:
    body = req.json()
    _get(cloud, id)
    if not isinstance(body, dict) or len(body) != 1:
        raise nova_error(400, "Malformed request body")
    (name,) = body
    if name not in ("lock", "unlock"):
        raise nova_error(400, f"There is no such action: {name}")
    cloud.set_locked(id, name == "lock")
    return Response(202)


# ---- metadata ---------------------------------------------------------------------------------

def metadata_show(cloud: CloudState, req: Request, id: str) -> Response:
    return Response(200, {"metadata": dict(_get(cloud, id).metadata)})


def metadata_replace(cloud: CloudState, req: Request, id: str) -> Response:
    return _metadata_write(cloud, req, id, replace=True)


def metadata_merge(cloud: CloudState, req: Request, id: str) -> Response:
    return _metadata_write(cloud, req, id, replace=False)


def _metadata_write(cloud: CloudState, req: Request, id: str, *, replace: bool) -> Response:
    body = req.json()
    if not isinstance(body, dict) or "metadata" not in body:
        raise _invalid("metadata", body, "'metadata' is a required property")
    new = _metadata(cloud, body["metadata"])
    with cloud.lock:
        server = _get(cloud, id)
        merged = new if replace else {**server.metadata, **new}
        _metadata(cloud, merged)
        server.metadata = dict(merged)
        server.updated = cloud.now()
        return Response(200, {"metadata": dict(server.metadata)})


def metadata_item_show(cloud: CloudState, req: Request, id: str, key: str) -> Response:
    server = _get(cloud, id)
    if key not in server.metadata:
        raise nova_error(404, "Metadata item was not found")
    return Response(200, {"meta": {key: server.metadata[key]}})


def metadata_item_put(cloud: CloudState, req: Request, id: str, key: str) -> Response:
    body = req.json()
    meta = body.get("meta") if isinstance(body, dict) else None
    if not isinstance(meta, dict) or len(meta) != 1:
        raise _invalid("meta", meta, "must hold exactly one item")
    if key not in meta:
        raise nova_error(400, "Request body and URI mismatch")
    _metadata(cloud, meta)
    with cloud.lock:
        server = _get(cloud, id)
        _metadata(cloud, {**server.metadata, **meta})
        server.metadata[key] = meta[key]
    return Response(200, {"meta": dict(meta)})


def metadata_item_delete(cloud: CloudState, req: Request, id: str, key: str) -> Response:
    with cloud.lock:
        server = _get(cloud, id)
        if key not in server.metadata:
            raise nova_error(404, "Metadata item was not found")
        del server.metadata[key]
    return Response(204)

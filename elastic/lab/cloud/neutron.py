"""Neutron v2.0: networks, subnets, ports, security groups and floating IPs, with Neutron's
field-equality filters and its error shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from elastic.lab.cloud.messages import Request, Response, isotime, neutron_error
from elastic.lab.cloud.model import FloatingIp, Network, Port
from elastic.lab.cloud.routing import Route, route
from elastic.lab.cloud.state import CloudState, Conflict, Invalid, NotFound, QuotaExceeded

_PREFIX = "/network/v2.0"
_NOT_FILTERS = {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"}
_EXTENSIONS = ("external-net", "router", "floatingip-pools", "security-group", "quotas", "standard-attr-description",
               "standard-attr-timestamp", "fip-port-details", "port-security", "binding", "subnet_allocation",
               "network-ip-availability")
_KINDS = {"network": "NetworkNotFound", "subnet": "SubnetNotFound", "port": "PortNotFound",
          "floatingip": "FloatingIPNotFound", "security_group": "SecurityGroupNotFound"}
_NAMES = {"network": "Network", "subnet": "Subnet", "port": "Port", "floatingip": "Floating IP",
          "security_group": "Security group"}


def _not_found(kind: str, ident: str):
    return neutron_error(404, _KINDS[kind], f"{_NAMES[kind]} {ident} could not be found.")


def versions(cloud: CloudState, req: Request) -> Response:
    return Response(200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                        "links": [{"rel": "self", "href": f"{req.base_url}/network/v2.0/"}]}]})


def extensions(cloud: CloudState, req: Request) -> Response:
    return Response(200, {"extensions": [{"alias": a, "name": a, "description": a,
                                          "updated": "2013-01-01T00:00:00-00:00", "links": []}
                                         for a in _EXTENSIONS]})


def _common(cloud: CloudState, created: float) -> dict[str, Any]:
    stamp = isotime(created)
    return {"tenant_id": cloud.project_id, "project_id": cloud.project_id, "created_at": stamp, "updated_at": stamp,
            "revision_number": 1, "description": "", "tags": []}


def _network_view(cloud: CloudState, net: Network) -> dict[str, Any]:
    return {"id": net.id, "name": net.name, "status": "ACTIVE", "admin_state_up": True, "shared": False,
            "router:external": net.external, "subnets": [net.subnet.id], "mtu": 1500, "port_security_enabled": True,
            "availability_zones": ["nova"], **_common(cloud, 0)}


def _subnet_view(cloud: CloudState, net: Network) -> dict[str, Any]:
    subnet = net.subnet
    return {"id": subnet.id, "name": f"{net.name}-subnet", "network_id": net.id, "cidr": str(subnet.cidr),
            "ip_version": 4, "gateway_ip": subnet.gateway, "enable_dhcp": True, "dns_nameservers": [],
            "host_routes": [],
            "allocation_pools": [{"start": str(subnet.cidr.network_address + 2),
                                  "end": str(subnet.cidr.broadcast_address - 1)}],
            "ipv6_ra_mode": None, "ipv6_address_mode": None, "subnetpool_id": None, **_common(cloud, 0)}


def _port_view(cloud: CloudState, port: Port) -> dict[str, Any]:
    groups = [cloud.security_groups[g] for g in cloud.servers[port.device_id].security_groups
              if g in cloud.security_groups]
    return {"id": port.id, "name": "", "network_id": port.network_id, "device_id": port.device_id,
            "device_owner": "compute:nova", "mac_address": port.mac, "status": "ACTIVE", "admin_state_up": True,
            "fixed_ips": [{"subnet_id": port.subnet_id, "ip_address": port.ip}], "security_groups": groups,
            "allowed_address_pairs": [], "extra_dhcp_opts": [], "port_security_enabled": True,
            "binding:vnic_type": "normal", **_common(cloud, port.created)}


def _fip_view(cloud: CloudState, fip: FloatingIp) -> dict[str, Any]:
    # A floating IP whose port went away (its server deleted) is disassociated, not deleted:
    # port_id and fixed_ip_address null, status DOWN, still allocated to the project.
    port = cloud.ports.get(fip.port_id) if fip.port_id else None
    details = None
    if port is not None:  # fip-port-details (Rocky): the port's device without a second request
        details = {"name": "", "network_id": port.network_id, "mac_address": port.mac, "admin_state_up": True,
                   "status": "ACTIVE", "device_id": port.device_id, "device_owner": "compute:nova"}
    return {"id": fip.id, "floating_ip_address": fip.address, "floating_network_id": fip.network_id,
            "port_id": fip.port_id, "fixed_ip_address": fip.fixed_ip, "router_id": None,
            "status": "ACTIVE" if fip.port_id else "DOWN", "port_details": details, "dns_name": "", "dns_domain": "",
            **_common(cloud, fip.created), "description": fip.description}


def _group_view(cloud: CloudState, name: str, group_id: str) -> dict[str, Any]:
    return {"id": group_id, "name": name, "security_group_rules": [], "stateful": True, "shared": False,
            **_common(cloud, 0)}


def _listing(key: str, req: Request, items: list[dict[str, Any]]) -> Response:
    """Neutron's filters: every other query parameter is an equality test on that field
    (repeat it for OR); `fields` trims the answer."""
    query = req.query
    for field, wanted in query.items():
        if field in _NOT_FILTERS:
            continue
        items = [i for i in items if field in i and _text(i[field]) in wanted]
    fields = query.get("fields")
    if fields:
        items = [{k: v for k, v in i.items() if k in fields} for i in items]
    return Response(200, {key: items})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # list fields (fixed_ips, ...) are not filterable this way
        return "\0"
    return "" if value is None else str(value)


def _one(key: str, view: Callable[[], dict[str, Any]]) -> Response:
    return Response(200, {key: view()})


def networks(cloud: CloudState, req: Request) -> Response:
    with cloud.lock:
        return _listing("networks", req, [_network_view(cloud, n) for n in cloud.networks.values()])


def network_show(cloud: CloudState, req: Request, id: str) -> Response:
    with cloud.lock:
        if id not in cloud.networks:
            raise _not_found("network", id)
        return _one("network", lambda: _network_view(cloud, cloud.networks[id]))


def subnets(cloud: CloudState, req: Request) -> Response:
    with cloud.lock:
        return _listing("subnets", req, [_subnet_view(cloud, n) for n in cloud.networks.values()])


def subnet_show(cloud: CloudState, req: Request, id: str) -> Response:
    with cloud.lock:
        net = next((n for n in cloud.networks.values() if n.subnet.id == id), None)
        if net is None:
            raise _not_found("subnet", id)
        return _one("subnet", lambda: _subnet_view(cloud, net))


def ports(cloud: CloudState, req: Request) -> Response:
    with cloud.lock:
        device = req.arg("device_id")
        candidates = cloud.server_ports(device) if device is not None else list(cloud.ports.values())
        return _listing("ports", req, [_port_view(cloud, p) for p in candidates])


def port_show(cloud: CloudState, req: Request, id: str) -> Response:
    with cloud.lock:
        if id not in cloud.ports:
            raise _not_found("port", id)
        return _one("port", lambda: _port_view(cloud, cloud.ports[id]))


def security_groups(cloud: CloudState, req: Request) -> Response:
    return _listing("security_groups", req, [_group_view(cloud, n, i) for n, i in cloud.security_groups.items()])


def security_group_show(cloud: CloudState, req: Request, id: str) -> Response:
    name = next((n for n, i in cloud.security_groups.items() if i == id), None)
    if name is None:
        raise _not_found("security_group", id)
    return _one("security_group", lambda: _group_view(cloud, name, id))


def floating_ips(cloud: CloudState, req: Request) -> Response:
    with cloud.lock:
        return _listing("floatingips", req, [_fip_view(cloud, f) for f in cloud.floating_ips.values()])


def floating_ip_show(cloud: CloudState, req: Request, id: str) -> Response:
    with cloud.lock:
        if id not in cloud.floating_ips:
            raise _not_found("floatingip", id)
        return _one("floatingip", lambda: _fip_view(cloud, cloud.floating_ips[id]))


def _translated(call: Callable[[], FloatingIp], cloud: CloudState, status: int) -> Response:
    try:
        fip = call()
    except NotFound as exc:
        raise _not_found(exc.kind, exc.ident) from None
    except Invalid as exc:
        raise neutron_error(400, "BadRequest", str(exc)) from None
    except QuotaExceeded:
        raise neutron_error(409, "OverQuota", "Quota exceeded for resources: ['floatingip'].") from None
    except Conflict as exc:
        raise neutron_error(409, "FloatingIPPortAlreadyAssociated", str(exc)) from None
    with cloud.lock:
        return Response(status, {"floatingip": _fip_view(cloud, fip)})


def _fip_body(req: Request) -> dict[str, Any]:
    body = req.json(lambda status, message: neutron_error(status, "BadRequest", message))
    if not isinstance(body, dict) or not isinstance(body.get("floatingip"), dict):
        raise neutron_error(400, "BadRequest", "Bad floatingip request: Resource body required.")
    return body["floatingip"]


def _description(fip: dict[str, Any]) -> str:
    value = fip.get("description", "")
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > 255:
        raise neutron_error(400, "BadRequest", f"Invalid input for description. Reason: '{value}' is not a valid "
                                               "string or exceeds the maximum length of 255.")
    return value


def floating_ip_create(cloud: CloudState, req: Request) -> Response:
    fip = _fip_body(req)
    if not fip.get("floating_network_id"):
        raise neutron_error(400, "BadRequest", "Invalid input for operation: floating_network_id is required.")
    description = _description(fip)
    return _translated(lambda: cloud.create_floating_ip(fip["floating_network_id"], fip.get("port_id"), description),
                       cloud, 201)


def floating_ip_update(cloud: CloudState, req: Request, id: str) -> Response:
    fip = _fip_body(req)
    if "description" in fip:
        description = _description(fip)
        _translated(lambda: cloud.describe_floating_ip(id, description), cloud, 200)
    if "port_id" not in fip:
        return floating_ip_show(cloud, req, id)
    return _translated(lambda: cloud.associate(id, fip["port_id"]), cloud, 200)


def floating_ip_delete(cloud: CloudState, req: Request, id: str) -> Response:
    try:
        cloud.delete_floating_ip(id)
    except NotFound:
        raise _not_found("floatingip", id) from None
    return Response(204)


def routes() -> list[Route]:
    def r(method: str, path: str, handler) -> Route:
        return route(method, _PREFIX + path, handler)

    return [
        route("GET", "/network", versions, auth=False),
        r("GET", "/extensions", extensions),
        r("GET", "/networks", networks),
        r("GET", "/networks/{id}", network_show),
        r("GET", "/subnets", subnets),
        r("GET", "/subnets/{id}", subnet_show),
        r("GET", "/ports", ports),
        r("GET", "/ports/{id}", port_show),
        r("GET", "/security-groups", security_groups),
        r("GET", "/security-groups/{id}", security_group_show),
        r("GET", "/floatingips", floating_ips),
        r("POST", "/floatingips", floating_ip_create),
        r("GET", "/floatingips/{id}", floating_ip_show),
        r("PUT", "/floatingips/{id}", floating_ip_update),
        r("DELETE", "/floatingips/{id}", floating_ip_delete),
    ]

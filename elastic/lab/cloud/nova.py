"""Nova (compute v2.1): version documents, flavors, keypairs, limits, and the route table that
puts every /v2.1 handler behind microversion negotiation."""

from __future__ import annotations

from typing import Any

from elastic.lab.cloud import nova_server_groups as server_groups, nova_servers as servers
from elastic.lab.cloud.messages import Request, Response, isotime, nova_error
from elastic.lab.cloud.microversion import version_entry, versioned
from elastic.lab.cloud.model import Flavor
from elastic.lab.cloud.routing import Route, route
from elastic.lab.cloud.state import CloudState

_PREFIX = "/compute/v2.1"
_versioned = versioned(lambda cloud: cloud.config.max_microversion)


def versions(cloud: CloudState, req: Request) -> Response:
    return Response(200, {"versions": [version_entry(f"{req.base_url}/compute", cloud.config.max_microversion)]})


def version(cloud: CloudState, req: Request) -> Response:
    return Response(200, {"version": version_entry(f"{req.base_url}/compute", cloud.config.max_microversion)})


# ---- flavors ----------------------------------------------------------------------------------

def _flavor_links(req: Request, flavor: Flavor) -> list[dict[str, str]]:
    return [{"rel": "self", "href": f"{servers.compute_base(req)}/flavors/{flavor.id}"},
            {"rel": "bookmark", "href": f"{req.base_url}/compute/flavors/{flavor.id}"}]


def _flavor_view(req: Request, flavor: Flavor, *, detail: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"id": flavor.id, "name": flavor.name, "links": _flavor_links(req, flavor)}
    if req.microversion >= (2, 55):
        view["description"] = None
    if not detail:
        return view
    view.update({"ram": flavor.ram, "vcpus": flavor.vcpus, "disk": flavor.disk, "OS-FLV-EXT-DATA:ephemeral": 0,
                 "OS-FLV-DISABLED:disabled": False, "rxtx_factor": 1.0, "os-flavor-access:is_public": True,
                 # Nova printed swap 0 as "" until 2.75.
                 "swap": 0 if req.microversion >= (2, 75) else ""})
    if req.microversion >= (2, 61):
        view["extra_specs"] = {}
    return view


def _flavor_list(cloud: CloudState, req: Request, *, detail: bool) -> Response:
    query = {key: values[-1] for key, values in req.query.items()}
    with cloud.lock:
        flavors = sorted(cloud.flavors.values(), key=lambda f: f.id)
    if "minRam" in query:
        flavors = [f for f in flavors if f.ram >= int(query["minRam"])]
    if "minDisk" in query:
        flavors = [f for f in flavors if f.disk >= int(query["minDisk"])]
    page, marker = servers.paginate(flavors, query, cloud.config.max_limit, lambda f: f.id)
    body: dict[str, Any] = {"flavors": [_flavor_view(req, f, detail=detail) for f in page]}
    if marker is not None:
        body["flavors_links"] = [{"rel": "next", "href": f"{servers.compute_base(req)}/flavors"
                                                         f"{'/detail' if detail else ''}?marker={marker}"}]
    return Response(200, body)


def flavors(cloud: CloudState, req: Request) -> Response:
    return _flavor_list(cloud, req, detail=False)


def flavors_detail(cloud: CloudState, req: Request) -> Response:
    return _flavor_list(cloud, req, detail=True)


def _flavor(cloud: CloudState, flavor_id: str) -> Flavor:
    with cloud.lock:
        flavor = cloud.flavors.get(flavor_id)
    if flavor is None:
        raise nova_error(404, f"Flavor {flavor_id} could not be found.")
    return flavor


def flavor_show(cloud: CloudState, req: Request, id: str) -> Response:
    return Response(200, {"flavor": _flavor_view(req, _flavor(cloud, id), detail=True)})


def flavor_extra_specs(cloud: CloudState, req: Request, id: str) -> Response:
    _flavor(cloud, id)
    return Response(200, {"extra_specs": {}})


# ---- keypairs, limits -------------------------------------------------------------------------

def _keypair_view(req: Request, name: str, key: dict[str, str]) -> dict[str, Any]:
    view = {"name": name, "public_key": key["public_key"], "fingerprint": key["fingerprint"]}
    if req.microversion >= (2, 2):
        view["type"] = "ssh"
    return view


def keypairs(cloud: CloudState, req: Request) -> Response:
    keypairs = [{"keypair": _keypair_view(req, name, key)} for name, key in cloud.keypairs.items()]
    return Response(200, {"keypairs": keypairs})


def keypair_show(cloud: CloudState, req: Request, name: str) -> Response:
    key = cloud.keypairs.get(name)
    if key is None:
        raise nova_error(404, f"Keypair {name} not found for user {cloud.user_id}")
    view = _keypair_view(req, name, key) | {"user_id": cloud.user_id, "id": 1, "deleted": False, "deleted_at": None,
                                            "created_at": isotime(cloud.now(), micro=True), "updated_at": None}
    return Response(200, {"keypair": view})


def limits(cloud: CloudState, req: Request) -> Response:
    used, quota = cloud.usage(), cloud.quotas
    absolute: dict[str, int] = {
        "maxTotalInstances": quota["instances"], "maxTotalCores": quota["cores"], "maxTotalRAMSize": quota["ram"],
        "totalInstancesUsed": used["instances"], "totalCoresUsed": used["cores"], "totalRAMUsed": used["ram"],
        "maxServerMeta": servers.MAX_METADATA_ITEMS, "maxTotalKeypairs": 100,
        "maxServerGroups": quota["server_groups"], "maxServerGroupMembers": quota["server_group_members"],
        "totalServerGroupsUsed": used["server_groups"],
    }
    if req.microversion < (2, 39):  # image metadata left the compute API at 2.39
        absolute["maxImageMeta"] = 128
    if req.microversion < (2, 36):  # network quotas left the compute API at 2.36
        absolute |= {"maxTotalFloatingIps": quota["floating_ips"], "totalFloatingIpsUsed": used["floating_ips"],
                     "maxSecurityGroups": 10, "maxSecurityGroupRules": 20, "totalSecurityGroupsUsed": 1}
    if req.microversion < (2, 57):
        absolute |= {"maxPersonality": 5, "maxPersonalitySize": 10240}
    return Response(200, {"limits": {"rate": [], "absolute": absolute}})


def routes() -> list[Route]:
    def v(method: str, path: str, handler) -> Route:
        return route(method, _PREFIX + path, _versioned(handler), label_path=path or "/")

    return [
        route("GET", "/compute", versions, auth=False),
        route("GET", _PREFIX, _versioned(version), auth=False),
        v("GET", "/servers/detail", servers.list_detail),
        v("GET", "/servers", servers.list_brief),
        v("POST", "/servers", servers.create),
        v("GET", "/servers/{id}", servers.show),
        v("DELETE", "/servers/{id}", servers.delete),
        v("POST", "/servers/{id}/action", servers.action),
        v("GET", "/servers/{id}/metadata", servers.metadata_show),
        v("PUT", "/servers/{id}/metadata", servers.metadata_replace),
        v("POST", "/servers/{id}/metadata", servers.metadata_merge),
        v("GET", "/servers/{id}/metadata/{key}", servers.metadata_item_show),
        v("PUT", "/servers/{id}/metadata/{key}", servers.metadata_item_put),
        v("DELETE", "/servers/{id}/metadata/{key}", servers.metadata_item_delete),
        v("GET", "/flavors/detail", flavors_detail),
        v("GET", "/flavors", flavors),
        v("GET", "/flavors/{id}", flavor_show),
        v("GET", "/flavors/{id}/os-extra_specs", flavor_extra_specs),
        v("GET", "/os-keypairs", keypairs),
        v("GET", "/os-keypairs/{name}", keypair_show),
        v("GET", "/limits", limits),
        v("GET", "/os-server-groups", server_groups.index),
        v("POST", "/os-server-groups", server_groups.create),
        v("GET", "/os-server-groups/{id}", server_groups.show),
        v("DELETE", "/os-server-groups/{id}", server_groups.delete),
    ]

"""Glance v2: version discovery, image list (with filters and paging) and image show."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from elastic.lab.cloud.messages import Request, Response, glance_error, isotime
from elastic.lab.cloud.model import Image
from elastic.lab.cloud.routing import Route, route
from elastic.lab.cloud.state import CloudState


def versions(cloud: CloudState, req: Request) -> Response:
    href = f"{req.base_url}/image/v2/"
    values = [{"id": version, "status": status, "links": [{"rel": "self", "href": href}]}
              for version, status in (("v2.16", "CURRENT"), ("v2.0", "SUPPORTED"))]
    # Glance answers its root with 300 Multiple Choices.
    return Response(300, {"versions": values})


def _view(cloud: CloudState, image: Image) -> dict[str, Any]:
    return {
        "id": image.id, "name": image.name, "status": "active", "visibility": "public", "protected": False,
        "os_hidden": False, "owner": cloud.project_id, "disk_format": "qcow2", "container_format": "bare",
        "size": 1073741824, "virtual_size": None, "min_disk": 0, "min_ram": 0, "checksum": None,
        "os_hash_algo": None, "os_hash_value": None, "tags": [], "created_at": isotime(image.created),
        "updated_at": isotime(image.created), "self": f"/v2/images/{image.id}", "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
    }


def images(cloud: CloudState, req: Request) -> Response:
    query = {key: values[-1] for key, values in req.query.items()}
    with cloud.lock:
        found = sorted(cloud.images.values(), key=lambda i: (i.created, i.id), reverse=True)
    for key in ("name", "id"):
        if key in query:
            found = [i for i in found if getattr(i, key) == query[key]]
    if query.get("status", "active") != "active" or query.get("visibility", "public") not in ("public", "all"):
        found = []
    if "marker" in query:
        index = next((n for n, i in enumerate(found) if i.id == query["marker"]), None)
        if index is None:
            raise glance_error(400, f"marker {query['marker']} not found")
        found = found[index + 1:]
    try:
        limit = int(query.get("limit", 25))
    except ValueError:
        raise glance_error(400, "limit param must be an integer") from None
    page = found[:limit]
    body: dict[str, Any] = {"images": [_view(cloud, i) for i in page], "first": "/v2/images",
                            "schema": "/v2/schemas/images"}
    if len(found) > limit and page:
        params = {k: v for k, v in query.items() if k != "marker"} | {"marker": page[-1].id}
        body["next"] = f"/v2/images?{urlencode(params)}"
    return Response(200, body)


def image_show(cloud: CloudState, req: Request, id: str) -> Response:
    with cloud.lock:
        image = cloud.images.get(id)
    if image is None:
        raise glance_error(404, f"No image found with ID {id}")
    return Response(200, _view(cloud, image))


def routes() -> list[Route]:
    return [
        route("GET", "/image", versions, auth=False),
        route("GET", "/image/v2/images", images),
        route("GET", "/image/v2/images/{id}", image_show),
    ]

"""Nova's /os-server-groups: create (validated by the request's microversion as Nova's schemas
do), list, show, delete, with views that change at 2.13 and 2.64.

Nova's formats (nova/api/openstack/compute/server_groups.py and schemas/server_groups.py):
- 2.1-2.14: `{"name", "policies": ["affinity" | "anti-affinity"]}`; the view has `policies` and an
  always empty `metadata`; from 2.13 also `project_id` and `user_id`.
- 2.15-2.63: the same, with "soft-affinity" and "soft-anti-affinity" allowed.
- 2.64 on: `{"name", "policy", "rules"?}`, `policies` and `metadata` gone; only anti-affinity takes
  rules (`max_server_per_host`).
Create answers 200; a body that fails the schema is a 400 naming the field as Nova's validator
does (the first error in schema order), over the quota `server_groups` a 403.
"""

from __future__ import annotations

from typing import Any

from elastic.lab.cloud.messages import Request, Response, nova_error
from elastic.lab.cloud.model import ServerGroup
from elastic.lab.cloud.state import CloudState, Invalid, NotFound, OverLimit

_HARD = ["anti-affinity", "affinity"]
_ALL = [*_HARD, "soft-anti-affinity", "soft-affinity"]
# The query parameters Nova's index accepts; from 2.75 any other is a 400.
_INDEX_PARAMS = frozenset({"all_projects", "limit", "offset"})


def _invalid(field: object, value: Any, why: str):
    return nova_error(400, f"Invalid input for field/attribute {field}. Value: {value}. {why}")


def view(cloud: CloudState, req: Request, group: ServerGroup) -> dict[str, Any]:
    result: dict[str, Any] = {"id": group.id, "name": group.name}
    if req.microversion >= (2, 64):
        result |= {"policy": group.policy, "rules": dict(group.rules)}
    else:
        result |= {"policies": [group.policy], "metadata": {}}
    result["members"] = [m for m in group.members if m in cloud.servers]
    if req.microversion >= (2, 13):
        result |= {"project_id": cloud.project_id, "user_id": cloud.user_id}
    return result


def _validated(req: Request, body: Any) -> tuple[str, str, dict[str, int]]:
    """(name, policy, rules) from a create body, or Nova's 400 for the request's microversion."""
    if not isinstance(body, dict) or "server_group" not in body:
        raise nova_error(400, "Invalid input for field/attribute server_group. Value: None. "
                              "'server_group' is a required property")
    extra = sorted(set(body) - {"server_group"})
    if extra:
        raise nova_error(400, f"Additional properties are not allowed ({', '.join(repr(e) for e in extra)} "
                              f"{'was' if len(extra) == 1 else 'were'} unexpected)")
    group = body["server_group"]
    if not isinstance(group, dict):
        raise _invalid("server_group", group, f"{group!r} is not of type 'object'")
    modern = req.microversion >= (2, 64)
    allowed = _ALL if req.microversion >= (2, 15) else _HARD
    # jsonschema reports the first failing keyword in schema order: properties, required, additionalProperties.
    name = group.get("name")
    if "name" in group:
        if not isinstance(name, str):
            raise _invalid("name", name, f"{name!r} is not of type 'string'")
        if not 1 <= len(name) <= 255:
            raise _invalid("name", name, f"{name!r} is {'too short' if not name else 'too long'}")
        if name != name.strip() or not name.isprintable():
            # Nova's format checker raises InvalidName, whose message stands alone.
            raise nova_error(400, "An invalid 'name' value was provided. The name must be: printable characters. "
                                  "Can not start or end with whitespace.")
    if modern:
        policy = group.get("policy")
        if "policy" in group and policy not in allowed:
            raise _invalid("policy", policy, f"{policy!r} is not one of {allowed!r}")
        rules = _rules(group["rules"]) if "rules" in group else {}
    elif "policies" in group:
        policies = group["policies"]
        if not isinstance(policies, list):
            raise _invalid("policies", policies, f"{policies!r} is not of type 'array'")
        if policies and policies[0] not in allowed:
            raise _invalid(0, policies[0], f"{policies[0]!r} is not one of {allowed!r}")
        if len(policies) != 1:
            why = "is too short" if not policies else "is too long"
            raise _invalid("policies", policies, f"{policies!r} {why}")
        policy, rules = policies[0], {}
    required = ["name", "policy"] if modern else ["name", "policies"]
    for key in required:
        if key not in group:
            raise _invalid("server_group", group, f"{key!r} is a required property")
    extra = sorted(set(group) - {*required, *(["rules"] if modern else [])})
    if extra:
        raise _invalid("server_group", group, f"Additional properties are not allowed "
                                              f"({', '.join(repr(e) for e in extra)} "
                                              f"{'was' if len(extra) == 1 else 'were'} unexpected)")
    return name, policy, rules


def _rules(rules: Any) -> dict[str, int]:
    if not isinstance(rules, dict):
        raise _invalid("rules", rules, f"{rules!r} is not of type 'object'")
    extra = sorted(set(rules) - {"max_server_per_host"})
    if extra:
        raise _invalid("rules", rules, f"Additional properties are not allowed ({', '.join(repr(e) for e in extra)} "
                                       f"{'was' if len(extra) == 1 else 'were'} unexpected)")
    if "max_server_per_host" not in rules:
        return {}
    value = rules["max_server_per_host"]
    # Nova's positive_integer: an integer, or a string of digits, at least 1.
    text = str(value)
    if isinstance(value, bool) or not isinstance(value, int | str) or not text.isdigit() or int(text) < 1:
        raise _invalid("max_server_per_host", value, f"{value!r} is not a positive integer")
    return {"max_server_per_host": int(text)}


def create(cloud: CloudState, req: Request) -> Response:
    name, policy, rules = _validated(req, req.json())
    try:
        with cloud.lock:
            group = cloud.create_server_group(name, policy, rules)
            return Response(200, {"server_group": view(cloud, req, group)})
    except OverLimit as exc:
        raise nova_error(403, str(exc)) from None
    except Invalid as exc:
        raise nova_error(400, str(exc)) from None


def index(cloud: CloudState, req: Request) -> Response:
    query = {key: values[-1] for key, values in req.query.items()}
    if req.microversion >= (2, 75):
        unknown = sorted(set(query) - _INDEX_PARAMS)
        if unknown:
            raise nova_error(400, f"Invalid input for query parameters {unknown[0]}. Value: {query[unknown[0]]}. "
                                  "Additional properties are not allowed")
    offset, limit = (_non_negative(query, key) for key in ("offset", "limit"))
    limit = min(limit if limit is not None else cloud.config.max_limit, cloud.config.max_limit)
    with cloud.lock:
        groups = cloud.list_server_groups()[offset or 0:][:limit]
        return Response(200, {"server_groups": [view(cloud, req, g) for g in groups]})


def _non_negative(query: dict[str, str], key: str) -> int | None:
    if key not in query:
        return None
    value = query[key]
    if not value.isdigit():
        raise nova_error(400, f"Invalid input for query parameters {key}. Value: {value}. "
                              f"{value!r} does not match '^[0-9]*$'")
    return int(value)


def _get(cloud: CloudState, group_id: str) -> ServerGroup:
    try:
        return cloud.get_server_group(group_id)
    except NotFound:
        raise nova_error(404, f"Instance group {group_id} could not be found.") from None


def show(cloud: CloudState, req: Request, id: str) -> Response:
    with cloud.lock:
        return Response(200, {"server_group": view(cloud, req, _get(cloud, id))})


def delete(cloud: CloudState, req: Request, id: str) -> Response:
    try:
        cloud.delete_server_group(id)
    except NotFound:
        raise nova_error(404, f"Instance group {id} could not be found.") from None
    return Response(204)

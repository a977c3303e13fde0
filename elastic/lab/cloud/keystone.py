"""Keystone v3: version discovery, and password or application-credential authentication that
issues a project-scoped token whose catalog points at this cloud's other services."""

from __future__ import annotations

import secrets
from typing import Any

from elastic.lab.cloud.messages import Request, Response, isotime, keystone_error
from elastic.lab.cloud.model import Token, stable_id
from elastic.lab.cloud.routing import Route, route
from elastic.lab.cloud.state import CloudState

_UNAUTHORIZED = "The request you have made requires authentication."
_SERVICES = (("identity", "keystone", "identity"), ("compute", "nova", "compute/v2.1"),
             ("image", "glance", "image"), ("network", "neutron", "network"))


def _v3_entry(req: Request) -> dict[str, Any]:
    return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{req.base_url}/identity/v3/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}


def versions(cloud: CloudState, req: Request) -> Response:
    # Keystone answers its unversioned root with 300 Multiple Choices.
    return Response(300, {"versions": {"values": [_v3_entry(req)]}})


def version(cloud: CloudState, req: Request) -> Response:
    return Response(200, {"version": _v3_entry(req)})


def _domain_matches(domain: Any, name: str) -> bool:
    if not isinstance(domain, dict):
        return False
    if "id" in domain:
        return domain["id"] == _domain_id(name)
    return domain.get("name") == name


def _domain_id(name: str) -> str:
    return "default" if name == "Default" else name.lower()


def _check_password(cloud: CloudState, identity: dict[str, Any]) -> bool:
    password = identity.get("password")
    user = password.get("user") if isinstance(password, dict) else None
    if not isinstance(user, dict):
        return False
    auth = cloud.config.auth
    if user.get("password") != auth["password"]:
        return False
    if "id" in user:
        return user["id"] == cloud.user_id
    return user.get("name") == auth["username"] and _domain_matches(user.get("domain"), auth["user_domain_name"])


def _check_scope(cloud: CloudState, scope: Any) -> bool:
    project = scope.get("project") if isinstance(scope, dict) else None
    if not isinstance(project, dict):
        return False
    if "id" in project:
        return project["id"] == cloud.project_id
    return project.get("name") == cloud.config.auth["project_name"] and _domain_matches(
        project.get("domain"), cloud.config.auth["project_domain_name"])


def _application_credential(cloud: CloudState, identity: dict[str, Any]) -> dict[str, str] | None:
    given = identity.get("application_credential") or {}
    for cred in cloud.config.application_credentials:
        named = given.get("id") == cred["id"] or given.get("name") == cred["name"]
        if given.get("secret") == cred["secret"] and named:
            return cred
    return None


def issue(cloud: CloudState, req: Request) -> Response:
    body = req.json(keystone_error)
    auth = body.get("auth") if isinstance(body, dict) else None
    identity = auth.get("identity") if isinstance(auth, dict) else None
    if not isinstance(identity, dict) or not isinstance(identity.get("methods"), list):
        raise keystone_error(400, "Expecting to find identity in auth. The server could not comply with the "
                                  "request since it is either malformed or otherwise incorrect. The client is "
                                  "assumed to be in error.")
    methods = identity["methods"]
    cred = None
    if methods == ["password"]:
        ok = _check_password(cloud, identity) and _check_scope(cloud, auth.get("scope"))
    elif methods == ["application_credential"]:
        cred = _application_credential(cloud, identity)
        ok = cred is not None
    else:
        ok = False
    token = cloud.issue_token(methods, cred) if ok else None  # None also while the fault auth_fails holds
    if token is None:
        # Keystone hides why (wrong secret, expired credential) and points at itself.
        raise keystone_error(401, _UNAUTHORIZED, {"WWW-Authenticate": f'Keystone uri="{req.base_url}/identity"'})
    return Response(201, {"token": _token_body(cloud, req, token)}, {"X-Subject-Token": token.id})


def _token_body(cloud: CloudState, req: Request, token: Token) -> dict[str, Any]:
    auth, region = cloud.config.auth, cloud.config.region
    user_domain = {"id": _domain_id(auth["user_domain_name"]), "name": auth["user_domain_name"]}
    project_domain = {"id": _domain_id(auth["project_domain_name"]), "name": auth["project_domain_name"]}
    catalog = []
    for kind, name, path in _SERVICES:
        url = f"{req.base_url}/{path}"
        catalog.append({"type": kind, "name": name, "id": stable_id(cloud.name, "service", kind), "endpoints": [
            {"id": stable_id(cloud.name, "endpoint", kind, interface), "interface": interface, "region": region,
             "region_id": region, "url": url} for interface in ("public", "internal", "admin")]})
    body: dict[str, Any] = {
        "methods": token.methods,
        "user": {"id": cloud.user_id, "name": auth["username"], "domain": user_domain, "password_expires_at": None},
        "audit_ids": [secrets.token_urlsafe(16)],
        "issued_at": isotime(token.issued, micro=True) + "Z",
        "expires_at": isotime(token.expires, micro=True) + "Z",
        "project": {"id": cloud.project_id, "name": auth["project_name"], "domain": project_domain},
        "is_domain": False,
        "roles": [{"id": stable_id(cloud.name, "role", r), "name": r} for r in ("member", "reader")],
        "catalog": catalog,
    }
    if token.application_credential:
        body["application_credential"] = {"id": token.application_credential["id"],
                                          "name": token.application_credential["name"], "restricted": True}
    return body


def routes() -> list[Route]:
    return [
        route("GET", "/identity", versions, auth=False),
        route("GET", "/identity/v3", version, auth=False),
        route("POST", "/identity/v3/auth/tokens", issue, auth=False),
    ]

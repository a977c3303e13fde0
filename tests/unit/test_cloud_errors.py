"""classify_exception / classify_fault against the exception objects openstacksdk 4.x and
keystoneauth1 5.x really raise (no HTTP).

HTTP failures are built the way the libraries build them: a requests.Response with status, headers
and a JSON (or HTML) body, turned into an exception by `openstack.exceptions.raise_from_response`
(every SDK proxy call: the proxy requests with raise_exc=False and the resource raises from the
response) or by `keystoneauth1.exceptions.http.from_response` (keystoneauth's own requests: token,
version discovery). Connection errors are raised inside an `except` of the requests exception, as
keystoneauth's Session._send_request does, so __context__ is what a real failure carries;
DiscoveryFailure and Connection.authorize()'s SDKException likewise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from types import SimpleNamespace

import pytest
import requests
from keystoneauth1 import exceptions as ksa
from keystoneauth1.exceptions import http as ksa_http
from openstack import exceptions as sdk
from requests.structures import CaseInsensitiveDict

from elastic.cloud import OpenStackCloud, classify_exception, classify_fault
from elastic.config import CloudConfig
from elastic.errors import CloudError, CloudErrorKind as K

CLOUD = "lab-east"
ACTION = "create c7-gpu-003"

NOVA = "https://nova.lab.example:8774/v2.1"
NEUTRON = "https://neutron.lab.example:9696/v2.0"
KEYSTONE = "https://keystone.lab.example:5000"


def _response(status: int, body: dict | str | None, *, url: str, method: str = "POST",
              headers: dict[str, str] | None = None) -> requests.Response:
    """A requests.Response as requests hands it to keystoneauth: status, reason, headers, body, request."""
    response = requests.Response()
    response.status_code = status
    response.reason = HTTPStatus(status).phrase
    response.url = url
    all_headers = {"x-openstack-request-id": "req-5f0c1d2e-7a3b-4c4d-9e8f-0a1b2c3d4e5f", **(headers or {})}
    if isinstance(body, dict):
        response._content = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    elif isinstance(body, str):
        response._content = body.encode()
        all_headers["Content-Type"] = "text/html; charset=UTF-8"
    else:
        response._content = b""
    response.headers = CaseInsensitiveDict(all_headers)
    response.request = requests.Request(method, url).prepare()
    return response


def _sdk_error(response: requests.Response) -> sdk.HttpException:
    """What an SDK proxy call raises for this response."""
    with pytest.raises(sdk.HttpException) as info:
        sdk.raise_from_response(response)
    return info.value


def _ksa_error(response: requests.Response) -> ksa.HttpError:
    """What a keystoneauth Session request with raise_exc=True raises for this response."""
    error = ksa_http.from_response(response, response.request.method, response.url)
    assert isinstance(error, ksa.HttpError)
    return error


def _raised_while_handling(cause: Callable[[], BaseException], outer: Callable[[BaseException], BaseException]):
    """`outer(cause)` raised inside `except cause:` (implicit chaining, as the libraries do it)."""
    try:
        try:
            raise cause()
        except Exception as inner:  # noqa: BLE001 - whatever `cause` built
            raise outer(inner)  # noqa: B904 - implicit __context__ is what the libraries produce
    except Exception as error:  # noqa: BLE001 - whatever `outer` built is the result
        return error


# ---- keystoneauth's own exceptions, built the way keystoneauth builds them ----------------------

def _ksa_connect_timeout() -> ksa.ConnectTimeout:
    # Session._send_request: `except requests.exceptions.Timeout: raise ConnectTimeout(...)`,
    # for a read timeout as much as for a connect timeout.
    return _raised_while_handling(
        lambda: requests.exceptions.ReadTimeout("HTTPSConnectionPool(host='nova.lab.example', port=8774): "
                                                "Read timed out. (read timeout=30.0)"),
        lambda _: ksa.ConnectTimeout(f"Request to {NOVA}/servers timed out"))


def _ksa_connect_failure() -> ksa.ConnectFailure:
    # Session._send_request: `except requests.exceptions.ConnectionError as e: raise ConnectFailure(...)`.
    return _raised_while_handling(
        lambda: requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='nova.lab.example', port=8774): Max retries exceeded with url: /v2.1/servers "
            "(Caused by NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))"),
        lambda e: ksa.ConnectFailure(f"Unable to establish connection to {NOVA}/servers: {e}"))


def _discovery_failure(cause: Callable[[], BaseException]) -> ksa.DiscoveryFailure:
    # identity.generic.BaseGenericPlugin._do_create_plugin: version discovery of an unversioned
    # auth_url failed with DiscoveryFailure/HttpError/SSLError/ConnectionError `e`.
    return _raised_while_handling(cause, lambda e: ksa.DiscoveryFailure(
        "Could not find versioned identity endpoints when attempting to authenticate. "
        f"Please check that your auth_url is correct. {e}"))


def _authorize_failure(cause: Callable[[], BaseException]) -> sdk.SDKException:
    # Connection.authorize(): `except keystoneauth1.exceptions.ClientException as e: raise SDKException(str(e))`.
    return _raised_while_handling(cause, lambda e: sdk.SDKException(str(e)))


KEYSTONE_500 = lambda: _ksa_error(_response(  # noqa: E731
    500, {"error": {"code": 500, "title": "Internal Server Error",
                    "message": "An unexpected error prevented the server from fulfilling your request."}},
    url=f"{KEYSTONE}/", method="GET"))
KEYSTONE_401 = lambda: _ksa_error(_response(  # noqa: E731
    401, {"error": {"code": 401, "title": "Unauthorized",
                    "message": "The request you have made requires authentication."}},
    url=f"{KEYSTONE}/v3/auth/tokens"))
KEYSTONE_503 = lambda: _ksa_error(_response(  # noqa: E731
    503, "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n"
         "</body></html>",
    url=f"{KEYSTONE}/v3/auth/tokens", headers={"Retry-After": "10"}))


# ---- rows ---------------------------------------------------------------------------------------
# (id, build the response or exception, the class the library gives it, kind, [final,] status, retry_after)

NOVA_QUOTA = "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"

SDK_HTTP_ROWS = [
    ("nova-403-quota",
     lambda: _response(403, {"forbidden": {"code": 403, "message": NOVA_QUOTA}}, url=f"{NOVA}/servers"),
     sdk.ForbiddenException, K.QUOTA, 403, None),
    ("nova-403-cores-quota",
     lambda: _response(403, {"forbidden": {"code": 403, "message":
                                           "Quota exceeded for cores: Requested 8, but already used 16 of 20 cores"}},
                       url=f"{NOVA}/servers"),
     sdk.ForbiddenException, K.QUOTA, 403, None),
    ("nova-403-policy",
     lambda: _response(403, {"forbidden": {"code": 403, "message":
                                           "Policy doesn't allow os_compute_api:servers:create to be performed."}},
                       url=f"{NOVA}/servers"),
     sdk.ForbiddenException, K.AUTH, 403, None),
    ("nova-401",
     lambda: _response(401, {"error": {"code": 401, "title": "Unauthorized",
                                       "message": "The request you have made requires authentication."}},
                       url=f"{NOVA}/servers/detail", method="GET"),
     sdk.HttpException, K.AUTH, 401, None),
    ("legacy-nova-413-overlimit-quota-retry-after-0",
     lambda: _response(413, {"overLimit": {"code": 413, "message": NOVA_QUOTA, "retryAfter": "0"}},
                       url=f"{NOVA}/servers", headers={"Retry-After": "0"}),
     sdk.HttpException, K.QUOTA, 413, None),
    ("413-overlimit-rate-limit-retry-after-5",
     lambda: _response(413, {"overLimit": {"code": 413, "message": "This request was rate-limited.",
                                           "retryAfter": "5",
                                           "details": "Only 10 POST request(s) can be made to * every minute."}},
                       url=f"{NOVA}/servers", headers={"Retry-After": "5"}),
     sdk.HttpException, K.RATE_LIMITED, 413, 5.0),
    ("429-retry-after",
     lambda: _response(429, "<html><body><h1>429 Too Many Requests</h1>\n"
                            "You have sent too many requests in a given amount of time.\n</body></html>",
                       url=f"{NOVA}/servers", headers={"Retry-After": "30"}),
     sdk.HttpException, K.RATE_LIMITED, 429, 30.0),
    ("429-no-retry-after",
     lambda: _response(429, {"message": "Too many requests"}, url=f"{NOVA}/servers/detail", method="GET"),
     sdk.HttpException, K.RATE_LIMITED, 429, None),
    ("nova-404-flavor",
     lambda: _response(404, {"itemNotFound": {"code": 404, "message": "Flavor gpu.xlarge could not be found."}},
                       url=f"{NOVA}/flavors/gpu.xlarge", method="GET"),
     sdk.NotFoundException, K.NOT_FOUND, 404, None),
    ("nova-409-locked",
     lambda: _response(409, {"conflictingRequest": {"code": 409, "message":
                                                    "Instance 6c0e4f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6 is locked"}},
                       url=f"{NOVA}/servers/6c0e4f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6", method="DELETE"),
     sdk.ConflictException, K.CONFLICT, 409, None),
    ("neutron-409-overquota-floatingip",
     lambda: _response(409, {"NeutronError": {"type": "OverQuota", "detail": "",
                                              "message": "Quota exceeded for resources: ['floatingip']."}},
                       url=f"{NEUTRON}/floatingips"),
     sdk.ConflictException, K.QUOTA, 409, None),
    ("nova-400-bad-flavor-ref",
     lambda: _response(400, {"badRequest": {"code": 400, "message": "Invalid flavorRef provided."}},
                       url=f"{NOVA}/servers"),
     sdk.BadRequestException, K.CONFIG, 400, None),
    ("nova-403-server-group-quota",
     lambda: _response(403, {"forbidden": {"code": 403, "message": "Quota exceeded, too many server groups."}},
                       url=f"{NOVA}/os-server-groups"),
     sdk.ForbiddenException, K.QUOTA, 403, None),
    ("nova-403-server-group-members-quota",
     lambda: _response(403, {"forbidden": {"code": 403, "message": "Quota exceeded, too many servers in group"}},
                       url=f"{NOVA}/servers"),
     sdk.ForbiddenException, K.QUOTA, 403, None),
    ("nova-400-hinted-server-group-not-found",
     lambda: _response(400, {"badRequest": {"code": 400, "message": "Instance group "
                                            "6d5a2c2e-5a7e-4b86-9b9a-1f2e3d4c5b6a could not be found."}},
                       url=f"{NOVA}/servers"),
     sdk.BadRequestException, K.NOT_FOUND, 400, None),
    ("nova-404-server-group",
     lambda: _response(404, {"itemNotFound": {"code": 404, "message": "Instance group "
                                              "6d5a2c2e-5a7e-4b86-9b9a-1f2e3d4c5b6a could not be found."}},
                       url=f"{NOVA}/os-server-groups/6d5a2c2e-5a7e-4b86-9b9a-1f2e3d4c5b6a", method="DELETE"),
     sdk.NotFoundException, K.NOT_FOUND, 404, None),
    ("nova-400-soft-policy-before-2.15",
     lambda: _response(400, {"badRequest": {"code": 400, "message":
                                            "Invalid input for field/attribute 0. Value: soft-affinity. "
                                            "'soft-affinity' is not one of ['anti-affinity', 'affinity']"}},
                       url=f"{NOVA}/os-server-groups"),
     sdk.BadRequestException, K.CONFIG, 400, None),
    ("nova-500",
     lambda: _response(500, {"computeFault": {"code": 500, "message":
                                              "Unexpected API Error. Please report this at "
                                              "http://bugs.launchpad.net/nova/ and attach the Nova API log if "
                                              "possible.\n<class 'oslo_db.exception.DBConnectionError'>"}},
                       url=f"{NOVA}/servers"),
     sdk.HttpException, K.TRANSIENT, 500, None),
    ("haproxy-503-retry-after",
     lambda: _response(503, "<html><body><h1>503 Service Unavailable</h1>\n"
                            "No server is available to handle this request.\n</body></html>",
                       url=f"{NOVA}/servers/detail", method="GET", headers={"Retry-After": "120"}),
     sdk.HttpException, K.TRANSIENT, 503, 120.0),
    ("nginx-502-no-body",
     lambda: _response(502, None, url=f"{NOVA}/servers/detail", method="GET"),
     sdk.HttpException, K.TRANSIENT, 502, None),
]

KSA_HTTP_ROWS = [
    ("keystone-401-token", KEYSTONE_401, ksa.Unauthorized, K.AUTH, 401, None),
    ("keystone-503-token-retry-after", KEYSTONE_503, ksa.ServiceUnavailable, K.TRANSIENT, 503, 10.0),
    ("keystone-429-token",
     lambda: _ksa_error(_response(429, {"error": {"code": 429, "title": "Too Many Requests",
                                                  "message": "Rate limit exceeded"}},
                                  url=f"{KEYSTONE}/v3/auth/tokens", headers={"Retry-After": "7"})),
     ksa_http.TooManyRequests, K.RATE_LIMITED, 429, 7.0),
]

CHAIN_ROWS = [
    ("ksa-connect-timeout-from-read-timeout", _ksa_connect_timeout, ksa.ConnectTimeout,
     K.UNREACHABLE, True, None, None),
    ("ksa-connect-timeout-from-connect-timeout",
     lambda: _raised_while_handling(
         lambda: requests.exceptions.ConnectTimeout("Connection to nova.lab.example timed out. (connect timeout=30)"),
         lambda _: ksa.ConnectTimeout(f"Request to {NOVA}/servers timed out")),
     ksa.ConnectTimeout, K.UNREACHABLE, True, None, None),
    ("requests-read-timeout",
     lambda: requests.exceptions.ReadTimeout("HTTPSConnectionPool(host='nova.lab.example', port=8774): "
                                             "Read timed out. (read timeout=30.0)"),
     requests.exceptions.ReadTimeout, K.UNREACHABLE, True, None, None),
    ("ksa-connect-failure", _ksa_connect_failure, ksa.ConnectFailure, K.UNREACHABLE, False, None, None),
    ("discovery-failure-from-500", lambda: _discovery_failure(KEYSTONE_500), ksa.DiscoveryFailure,
     K.TRANSIENT, False, 500, None),
    ("discovery-failure-from-connect-failure", lambda: _discovery_failure(_ksa_connect_failure),
     ksa.DiscoveryFailure, K.UNREACHABLE, False, None, None),
    ("discovery-failure-from-timeout", lambda: _discovery_failure(_ksa_connect_timeout),
     ksa.DiscoveryFailure, K.UNREACHABLE, True, None, None),
    ("discovery-failure-alone",
     lambda: ksa.DiscoveryFailure("Could not find versioned identity endpoints when attempting to authenticate. "
                                  "Please check that your auth_url is correct."),
     ksa.DiscoveryFailure, K.CONFIG, False, None, None),
    ("authorize-sdkexception-from-unauthorized", lambda: _authorize_failure(KEYSTONE_401), sdk.SDKException,
     K.AUTH, False, 401, None),
    ("authorize-sdkexception-from-timeout", lambda: _authorize_failure(_ksa_connect_timeout), sdk.SDKException,
     K.UNREACHABLE, True, None, None),
    ("authorize-sdkexception-from-503", lambda: _authorize_failure(KEYSTONE_503), sdk.SDKException,
     K.TRANSIENT, False, 503, 10.0),
    ("authorize-sdkexception-from-discovery-500",
     lambda: _authorize_failure(lambda: _discovery_failure(KEYSTONE_500)), sdk.SDKException,
     K.TRANSIENT, False, 500, None),
    ("ksa-endpoint-not-found",
     lambda: ksa.EndpointNotFound("public endpoint for compute service in RegionTwo region not found"),
     ksa.EndpointNotFound, K.CONFIG, False, None, None),
    ("sdk-endpoint-not-found",
     lambda: sdk.EndpointNotFound("No endpoint found for compute"), sdk.EndpointNotFound,
     K.CONFIG, False, None, None),
    ("sdk-unknown-cloud-in-clouds-yaml",
     lambda: sdk.ConfigException("Cloud openstack-lab was not found."), sdk.ConfigException,
     K.CONFIG, False, None, None),
    ("sdk-service-not-in-catalog",
     lambda: sdk.ServiceDisabledException(
         "Service 'compute' is disabled because its configuration could not be loaded. The service is not "
         "present in the service catalog: public endpoint for compute service in RegionTwo region not found"),
     sdk.ServiceDisabledException, K.CONFIG, False, None, None),
    ("unknown-value-error", lambda: ValueError("invalid literal for int() with base 10: 'None'"), ValueError,
     K.TRANSIENT, False, None, None),
]


def _assert_named_once(error: CloudError) -> None:
    text = str(error)
    assert error.cloud == CLOUD
    assert text.startswith(f"{CLOUD}: {error.kind.value}: {ACTION}: "), text
    assert text.count(CLOUD) == 1, text
    assert text.count(ACTION) == 1, text


@pytest.mark.parametrize(("make_response", "exc_type", "kind", "status", "retry_after"),
                         [row[1:] for row in SDK_HTTP_ROWS], ids=[row[0] for row in SDK_HTTP_ROWS])
def test_sdk_http_errors(make_response, exc_type, kind, status, retry_after):
    """An SDK proxy call's HTTP error (raise_from_response) maps by status, quota words and Retry-After."""
    exc = _sdk_error(make_response())
    assert type(exc) is exc_type
    error = classify_exception(exc, cloud=CLOUD, action=ACTION)
    assert (error.kind, error.final, error.status, error.retry_after) == (kind, False, status, retry_after)
    _assert_named_once(error)


@pytest.mark.parametrize(("make_exc", "exc_type", "kind", "status", "retry_after"),
                         [row[1:] for row in KSA_HTTP_ROWS], ids=[row[0] for row in KSA_HTTP_ROWS])
def test_keystoneauth_http_errors(make_exc, exc_type, kind, status, retry_after):
    """keystoneauth's own HTTP errors (from_response, e.g. the token request) map like the SDK's."""
    exc = make_exc()
    assert type(exc) is exc_type
    error = classify_exception(exc, cloud=CLOUD, action=ACTION)
    assert (error.kind, error.final, error.status, error.retry_after) == (kind, False, status, retry_after)
    _assert_named_once(error)


@pytest.mark.parametrize(("make_exc", "exc_type", "kind", "final", "status", "retry_after"),
                         [row[1:] for row in CHAIN_ROWS], ids=[row[0] for row in CHAIN_ROWS])
def test_non_http_and_chained_errors(make_exc, exc_type, kind, final, status, retry_after):
    """Timeouts, refused connections, discovery, authorize() and unknown errors map by type and cause chain."""
    exc = make_exc()
    assert type(exc) is exc_type
    error = classify_exception(exc, cloud=CLOUD, action=ACTION)
    assert (error.kind, error.final, error.status, error.retry_after) == (kind, final, status, retry_after)
    _assert_named_once(error)


def test_message_without_cloud_or_action():
    """With no cloud and no action the message is just `kind: detail`."""
    error = classify_exception(_sdk_error(_response(404, {"itemNotFound": {"code": 404, "message":
                                                                           "Image x could not be found."}},
                                                    url=f"{NOVA}/images/x", method="GET")))
    assert str(error) == "not-found: Image x could not be found."


def _no_keypair(name: str) -> None:
    raise sdk.NotFoundException(f"Keypair {name} not found")


def test_a_failed_look_up_names_the_resource(tmp_path):
    """A look-up by name that fails on the way (here Glance's 503) is about the resource it looked for,
    as a name that is not found is; other calls name none."""
    def images(uri: str, **kwargs: object) -> requests.Response:
        name = kwargs["params"]["name"]  # type: ignore[index]
        return _response(503, "busy", url=f"https://glance.lab.example:9292/v2/images?name={name}", method="GET")

    flavors = _response(200, {"flavors": [{"id": "f1", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20}]},
                        url=f"{NOVA}/flavors/detail", method="GET")
    cloud = OpenStackCloud(CLOUD, CloudConfig(clouds_yaml=tmp_path / "clouds.yaml", rate=0))
    cloud._conn = SimpleNamespace(
        compute=SimpleNamespace(get=lambda uri, **kwargs: flavors,
                                get_keypair=_no_keypair),
        image=SimpleNamespace(get_endpoint=lambda: "https://glance.lab.example:9292/v2", get=images))
    with pytest.raises(CloudError) as caught:
        cloud.resolve_boot("m1.small", "debian-12", "private")
    assert (caught.value.kind, caught.value.resource) == (K.TRANSIENT, ("image", "debian-12"))
    with pytest.raises(CloudError) as caught:
        cloud.find_keypair("hpc")
    assert (caught.value.kind, caught.value.resource) == (K.NOT_FOUND, ("keypair", "hpc"))
    assert str(caught.value) == f"{CLOUD}: not-found: key pair 'hpc' not found"
    assert classify_exception(_sdk_error(_response(503, "busy", url=f"{NOVA}/servers"))).resource is None


FAULT_ROWS = [
    ("no-valid-host", "No valid host was found. There are not enough hosts available.", K.CAPACITY),
    ("no-valid-host-lowercase", "no valid host was found. ", K.CAPACITY),
    ("max-retries", "Exceeded maximum number of retries. Exceeded max scheduling attempts 3 for instance "
                    "6c0e4f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6. Last exception: internal error: qemu unexpectedly "
                    "closed the monitor", K.BOOT),
    ("build-aborted", "Build of instance 6c0e4f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6 aborted: Failed to allocate the "
                      "network(s), not rescheduling.", K.BOOT),
    ("empty", "", K.BOOT),
    ("none", None, K.BOOT),
]


@pytest.mark.parametrize(("message", "kind"), [row[1:] for row in FAULT_ROWS], ids=[row[0] for row in FAULT_ROWS])
def test_classify_fault(message, kind):
    """An ERROR server's fault is CAPACITY only for Nova's 'No valid host', BOOT otherwise (also no fault)."""
    assert classify_fault(message) is kind


@pytest.mark.parametrize("message", [
    "Maximum number of ports exceeded",
    "Project 9f3c is over a limit for [Resource servers is over limit of 10 due to current usage 10 and delta 1]",
    "Project 9f3c is over a limit for [Resource class:VCPU is over limit of 40 due to current usage 40 and delta 4]",
], ids=["port-quota", "unified-limits-servers", "unified-limits-vcpu"])
def test_nova_quota_refusals_without_the_word_quota_are_quota(message):
    """Nova's 403 for a port quota and for unified limits (oslo.limit's text) is quota, not a policy refusal."""
    error = classify_exception(_sdk_error(_response(403, {"forbidden": {"code": 403, "message": message}},
                                                    url=f"{NOVA}/servers")), cloud="east", action="create")
    assert error.kind is K.QUOTA and not error.retryable


@pytest.mark.parametrize("make_exc", [
    lambda: _authorize_failure(lambda: _discovery_failure(lambda: _ksa_error(_response(
        404, {"error": {"code": 404, "message": "Not Found"}}, url=f"{KEYSTONE}/", method="GET")))),
    lambda: _authorize_failure(lambda: _ksa_error(_response(
        404, {"error": {"code": 404, "message": "Not Found"}}, url=f"{KEYSTONE}/v3/auth/tokens"))),
    lambda: _authorize_failure(lambda: _ksa_error(_response(
        400, {"error": {"code": 400, "message": "Expecting to find domain in user"}},
        url=f"{KEYSTONE}/v3/auth/tokens"))),
], ids=["wrong-auth-url", "tokens-404", "tokens-400"])
def test_login_refused_for_wrong_auth_settings_is_config(make_exc):
    """A 4xx from Keystone while logging in (wrapped by Connection.authorize) is config: no retry helps."""
    error = classify_exception(make_exc(), cloud="east", action="connect")
    assert error.kind is K.CONFIG and not error.retryable

"""HTTP plumbing: one threaded server on 127.0.0.1 for every cloud, path-prefixed by cloud name;
applies the cloud's faults, checks tokens, dispatches to the services, records each request."""

from __future__ import annotations

import logging
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from elastic.lab.cloud import glance, keystone, neutron, nova
from elastic.lab.cloud.messages import (
    ApiError,
    Request,
    Response,
    glance_error,
    keystone_error,
    neutron_error,
    nova_error,
)
from elastic.lab.cloud.microversion import text
from elastic.lab.cloud.requestlog import RequestLog
from elastic.lab.cloud.routing import Router
from elastic.lab.cloud.state import CloudState

log = logging.getLogger(__name__)

ROUTER = Router(keystone.routes() + nova.routes() + glance.routes() + neutron.routes())
_ERRORS: dict[str, Callable[[int, str], ApiError]] = {
    "compute": nova_error, "identity": keystone_error, "image": glance_error,
    "network": lambda status, message: neutron_error(status, "HTTPError", message),
}
_RECORDED_HEADERS = ("OpenStack-API-Version", "X-OpenStack-Nova-API-Version", "User-Agent")


class App(Protocol):
    clouds: dict[str, CloudState]
    log: RequestLog
    stopping: threading.Event

    def control(self, method: str, path: str, query: str, body: bytes) -> Response: ...


class LabHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App):
        self.app = app
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="lab-cloud-http", daemon=True)
        with self._open_lock:
            self._open[request] = thread
        thread.start()

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-request is routine under load and outages: no traceback.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("client %s went away: %s", client_address, error)
        else:
            log.exception("lab cloud: error while serving %s", client_address)

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float = 5.0) -> None:
        """Wake every handler thread still holding a keep-alive connection, and wait for them."""
        with self._open_lock:
            open_now = list(self._open.items())
        for sock, _ in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _, thread in open_now:
            thread.join(max(0.0, deadline - time.monotonic()))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's session pool expects
    timeout = 120  # an idle keep-alive connection is closed after this
    server: LabHTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without NODELAY, Nagle plus the client's delayed
        # ACK would hold every reply ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self):
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _serve(self) -> None:
        started = time.monotonic()
        app = self.server.app
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        head, _, rest = parts.path.lstrip("/").partition("/")
        if head == "_lab":
            self._send(app.control(self.command, "/" + rest.rstrip("/"), parts.query, body))
            return
        cloud = app.clouds.get(head)
        if cloud is None:
            self._send(nova_error(404, f"No cloud named {head!r} here; clouds: {', '.join(app.clouds)}").response)
            return
        path = "/" + rest.rstrip("/") if rest.rstrip("/") else "/"
        service = path.split("/")[1]
        req = Request(self.command, path, parts.query, self.headers, body, f"http://{self._host()}/{head}")
        found, params, path_known = ROUTER.match(self.command, path)
        record: dict[str, Any] = {
            "time": time.time(), "cloud": head, "service": service, "method": self.command, "path": self.path,
            "endpoint": found.label if found else f"{self.command} {path}", "status": None,
            "headers": {h: self.headers[h] for h in _RECORDED_HEADERS if h in self.headers}, "microversion": None,
        }
        response, lose_reply = self._answer(app, cloud, req, found, params, path_known, service)
        payload = b""
        if response is not None:
            payload = response.encoded()
            record["status"] = response.status
            if service == "compute" and "X-OpenStack-Nova-API-Version" in response.headers:
                record["microversion"] = text(req.microversion)
        if lose_reply:
            record["reply_lost"] = True  # processed, answered `status`, but the client never saw it
        record["duration_s"] = time.monotonic() - started
        # Logged before the reply leaves, so a client that got its answer finds it in the log.
        app.log.add(record)
        if response is None or lose_reply:
            self._drop()
        else:
            self._send(response, payload)

    def _answer(self, app: App, cloud: CloudState, req: Request, found, params, path_known,
                service) -> tuple[Response | None, bool]:
        """(The response, or None to drop the connection unanswered; whether its reply is lost:
        the request was processed, then the connection is dropped all the same)."""
        error = _ERRORS.get(service, nova_error)
        cloud.settle()
        verdict = cloud.gate.admit(time.monotonic(), req.method)
        if verdict.drop:
            # Held (timeout, blackhole) until the delay passes, the outage is lifted or the lab stops.
            cloud.gate.hold(verdict.delay)
            return None, False
        if verdict.status == 429:
            return _rate_limited(error, verdict.retry_after), False
        if verdict.delay and app.stopping.wait(verdict.delay):
            return None, False
        if verdict.status is not None:
            return error(verdict.status, "Injected fault: the service failed this request").response, False
        return self._process(cloud, req, found, params, path_known, error), verdict.lose_reply

    def _process(self, cloud: CloudState, req: Request, found, params, path_known, error) -> Response:
        if found is None:
            if path_known:
                return error(405, f"The method {req.method} is not allowed for this resource.").response
            return error(404, "The resource could not be found.").response
        if found.auth and not cloud.token_valid(req.header("X-Auth-Token")):
            response = keystone_error(401, "The request you have made requires authentication.").response
            response.headers["WWW-Authenticate"] = f'Keystone uri="{req.base_url}/identity"'
            return response
        try:
            return found.handler(cloud, req, **params)
        except ApiError as exc:
            return exc.response
        except Exception:
            log.exception("lab cloud %s: %s %s failed", cloud.name, req.method, req.path)
            return error(500, "Unexpected error in the lab emulator").response

    def _host(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def _send(self, response: Response, payload: bytes | None = None) -> None:
        payload = response.encoded() if payload is None else payload
        self.send_response(response.status)
        headers = {"Content-Type": "application/json", "x-openstack-request-id": f"req-{uuid.uuid4()}",
                   **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    def _drop(self) -> None:
        # Linger 0 makes close() send a RST: the client sees "connection reset", as when a load
        # balancer in front of a dead API drops it.
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _rate_limited(error: Callable[[int, str], ApiError], retry_after: int | None) -> Response:
    response = error(429, "Rate limit exceeded: too many requests, retry later.").response
    response.headers["Retry-After"] = str(retry_after or 1)
    return response

"""The HTTP side of ``mmrm serve``: uvicorn (its h11 protocol, so headers have a size limit)
with a read deadline on headers and bodies, and an ASGI app that answers only what the
endpoints take before any work reaches a replica: the exact paths and methods, the ``Host``
of a loopback server, the bearer token, a JSON content type, the body size. Requests go to
the replicas through a Ray Serve handle; one whose client disconnects or whose time runs out
is cancelled there. ``/metrics`` is Prometheus text; every request is one log line."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from mmrm.config import ServeConfig
from mmrm.serve import network
from mmrm.serve.requests import encode_answer

#: Endpoints and the one method each takes.
ROUTES = {"/score": "POST", "/get_reward": "POST", "/health": "GET", "/info": "GET",
          "/metrics": "GET"}


class Metrics:
    """The server's counters in a registry of its own (Prometheus text at ``/metrics``):
    requests by endpoint and status, items and responses scored, latency, refusals by
    reason, requests in flight."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mmrm_requests", "Requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.items = Counter("mmrm_items", "Items (or queries) scored.", ["endpoint"],
                             registry=self.registry)
        self.responses = Counter("mmrm_responses", "Responses scored.", ["endpoint"],
                                 registry=self.registry)
        self.refusals = Counter("mmrm_refusals", "Requests refused or not answered, by "
                                "reason.", ["reason"], registry=self.registry)
        self.seconds = Histogram("mmrm_request_seconds", "Seconds from the request's headers "
                                 "to its answer.", ["endpoint"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.in_flight = Gauge("mmrm_requests_in_flight", "Requests being scored.",
                               registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Answer(Exception):
    """An answer decided before the replica (a refusal): status, body, reason, headers."""

    def __init__(self, status: int, message: str, reason: str, headers=()):
        super().__init__(message)
        self.status, self.body, self.reason = status, {"error": message}, reason
        self.headers = list(headers)


class ClientGone(Exception):
    """The client closed the connection before its answer."""


class Front:
    """The ASGI app in front of the replicas (see the module)."""

    def __init__(self, config: ServeConfig, token: str | None, handle, log: Callable):
        self.config, self.token, self.handle, self.log = config, token, handle, log
        self.metrics = Metrics()
        self.slots = asyncio.Semaphore(config.max_concurrent_requests)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        started, endpoint = time.perf_counter(), scope["path"]
        outcome = {"items": 0, "responses": 0, "reason": None}
        try:
            status, body, headers = await self.respond(scope, receive, outcome)
        except ClientGone:
            status, body, headers = 499, None, []
            outcome["reason"] = outcome["reason"] or "client_gone"
        if body is not None:
            await send_answer(send, status, body, headers)
        seconds = time.perf_counter() - started
        named = endpoint if endpoint in ROUTES else "other"
        self.metrics.requests.labels(named, str(status)).inc()
        self.metrics.seconds.labels(named).observe(seconds)
        if outcome["reason"]:
            self.metrics.refusals.labels(outcome["reason"]).inc()
        if outcome["items"]:
            self.metrics.items.labels(named).inc(outcome["items"])
            self.metrics.responses.labels(named).inc(outcome["responses"])
        self.log(json.dumps({"endpoint": endpoint[:64], "method": scope["method"],
                             "status": status, "items": outcome["items"],
                             "responses": outcome["responses"], "seconds": round(seconds, 4),
                             **({"reason": outcome["reason"]} if outcome["reason"] else {})}))

    async def respond(self, scope, receive, outcome: dict) -> tuple[int, bytes, list]:
        try:
            return await self.route(scope, receive, outcome)
        except Answer as answer:
            outcome["reason"] = answer.reason
            return answer.status, encode_answer(answer.body), answer.headers

    async def route(self, scope, receive, outcome: dict) -> tuple[int, bytes, list]:
        headers = header_lists(scope["headers"])
        if not network.host_allowed(self.config, headers.get("host", [])):
            raise Answer(421, "Host not allowed: this server answers to its loopback names "
                              "only", "host")
        path, method = scope["path"], scope["method"]
        if path not in ROUTES:
            raise Answer(404, f"no endpoint {path[:64]}", "not_found")
        if method != ROUTES[path]:
            raise Answer(405, f"{path} takes {ROUTES[path]} only", "method",
                         [(b"allow", ROUTES[path].encode())])
        if path == "/health":
            return await self.health()
        allowed = network.authorized(self.token, headers.get("authorization", []))
        if allowed is None:
            raise Answer(400, "Authorization: one header, 'Bearer <token>'", "auth")
        if not allowed:
            raise Answer(401, "missing or wrong bearer token", "auth",
                         [(b"www-authenticate", b"Bearer")])
        if path == "/metrics":
            return 200, self.metrics.text(), [(b"content-type", b"text/plain; version=0.0.4")]
        if path == "/info":
            return 200, encode_answer(await self.call("info", timeout=10)), []
        return await self.score(path, headers, receive, outcome)

    async def health(self) -> tuple[int, bytes, list]:
        """Ready only when a replica answers (it scored an item at start)."""
        try:
            return 200, encode_answer(await self.call("ready", timeout=5)), []
        except Answer:
            return 503, encode_answer({"status": "not ready"}), [(b"retry-after", b"2")]

    async def score(self, path: str, headers: dict, receive, outcome: dict
                    ) -> tuple[int, bytes, list]:
        kind = headers.get("content-type", [""])[0].split(";")[0].strip().lower()
        if kind != "application/json":
            raise Answer(415, "Content-Type must be application/json", "content_type")
        if self.slots.locked():
            raise Answer(503, f"{self.config.max_concurrent_requests} requests are being "
                              f"scored already: retry", "busy", [(b"retry-after", b"1")])
        async with self.slots:
            self.metrics.in_flight.inc()
            try:
                raw = await read_body(receive, headers, self.config)
                answer = await self.scored(path, raw, receive)
            finally:
                self.metrics.in_flight.dec()
        outcome.update(items=answer.get("items", 0), responses=answer.get("responses", 0),
                       reason=answer.get("reason"))
        return answer["status"], encode_answer(answer["body"]), []

    async def scored(self, path: str, raw: bytes, receive) -> dict:
        """The replica's answer; cancelled there if the client disconnects first or the
        request's time runs out."""
        response = self.handle.handle.remote(path, raw)
        work = asyncio.ensure_future(_await(response))
        gone = asyncio.ensure_future(wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=self.config.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if work in done:
            try:
                return work.result()
            except Exception as err:          # noqa: BLE001 - a replica died, Serve restarts
                raise Answer(503, f"no replica answered ({type(err).__name__}): retry",
                             "unavailable", [(b"retry-after", b"2")]) from None
        response.cancel()
        work.cancel()
        if gone in done:
            raise ClientGone()
        raise Answer(504, f"not scored within request_timeout_s "
                          f"{self.config.request_timeout_s:g} s (the work is cancelled)",
                     "timeout")

    async def call(self, method: str, timeout: float) -> dict:
        try:
            return await asyncio.wait_for(_await(getattr(self.handle, method).remote()),
                                          timeout)
        except Exception as err:      # noqa: BLE001 - not ready, or a replica died
            raise Answer(503, f"no replica answered ({type(err).__name__})", "unavailable",
                         [(b"retry-after", b"2")]) from None


async def _await(response):
    return await response


def header_lists(raw: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    """ASGI headers as ``{lower-case name: [values]}`` (a name given twice keeps both)."""
    found: dict[str, list[str]] = {}
    for name, value in raw:
        found.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return found


async def read_body(receive, headers: dict, config: ServeConfig) -> bytes:
    """The body, refused (413) as soon as it passes the limit (a declared length first) and
    (408) when it is not complete ``body_timeout_s`` after the headers."""
    declared = headers.get("content-length", [])
    if len(declared) > 1:
        raise Answer(400, "Content-Length given twice", "bad_request")
    if declared and declared[0].isdigit() and int(declared[0]) > config.max_body_bytes:
        raise Answer(413, f"body of {declared[0]} bytes exceeds the limit of "
                          f"{config.max_body_bytes}", "body_too_large")
    chunks, size = [], 0
    deadline = time.monotonic() + config.body_timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(receive(), max(0.0, left))
        except asyncio.TimeoutError:
            raise Answer(408, f"body not complete within {config.body_timeout_s:g} s",
                         "body_timeout", [(b"connection", b"close")]) from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        size += len(message.get("body", b""))
        if size > config.max_body_bytes:
            raise Answer(413, f"body exceeds the limit of {config.max_body_bytes} bytes",
                         "body_too_large", [(b"connection", b"close")])
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def wait_disconnect(receive) -> None:
    """Returns when the client closes the connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_answer(send, status: int, body: bytes, headers: list) -> None:
    names = {name for name, _ in headers}
    base = [] if b"content-type" in names else [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status,
                "headers": [*base, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def header_timed_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline on a request's headers: a connection whose
    headers are not complete ``seconds`` after it opened (or after its last answer) gets
    408 and is closed (a slow-header client holds nothing)."""

    class HeaderTimedH11(H11Protocol):
        header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            self._disarm()
            self.header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self):
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:      # the headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self):
            self.header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            body = encode_answer({"error": f"headers not complete within {seconds:g} s"})
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: "
                                 b"application/json\r\ncontent-length: " +
                                 str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                                 + body)
            self.transport.close()

    return HeaderTimedH11


def http_server(app: Front, config: ServeConfig):
    """The uvicorn server of ``app`` on ``config.host:port``: h11 with the header size and
    deadline limits, short keep-alive."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, http=header_timed_protocol(
            config.header_timeout_s), h11_max_incomplete_event_size=config.max_header_bytes,
        timeout_keep_alive=5, lifespan="off", access_log=False, log_level="warning",
        limit_concurrency=4 * config.max_concurrent_requests + 16))

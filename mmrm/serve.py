"""``mmrm serve``: a reward model over HTTP on Ray Serve, for RL loops (PPO / GRPO /
best-of-N) that need rewards online, images included.

Endpoints (JSON in, JSON out):

* ``POST /score`` — mmrm's shape: ``{"items": [{"prompt", "responses": [...], and "image"
  (base64) or "img_path" (under the server's --image-root)}]}`` -> ``{"rewards": [[...]]}``,
  N rewards per item in order.
* ``POST /get_reward`` — OpenRLHF's remote reward model: ``{"query": [...], "prompts":
  [...]?, "labels": [...]?, "images": [base64 | null, ...]?}`` -> ``{"rewards": [...],
  "scores": [...]}``. Each query is split into prompt and response (:meth:`RewardService.split`);
  a query without an image is scored with a blank white image (what the reward model then
  rewards is the text alone).
* ``GET /health`` (never needs the token), ``GET /info`` (model digest, dtype,
  normalisation, limits).

Every request passes the server's limits (body size, items, responses per item, image pixels;
the request timeout is Serve's); bad input is a 4xx JSON ``{"error": ..., "index", "field"}``
and never takes a replica down. Requests from concurrent clients are batched
(``serve.batch``); each item's image and prompt are encoded once for its responses, as
``mmrm score`` does (:class:`mmrm.inference.ResponseScorer`). The server listens on
127.0.0.1 unless ``--host`` says otherwise, and a non-loopback host needs a bearer token.

The parsing and scoring core (:class:`RewardService`) is plain Python: tests call it
without Ray; :func:`deployment` wraps it for Serve.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from mmrm.config import ServeConfig


@dataclass
class RequestError(Exception):
    """A request the server refuses: its HTTP status, what is wrong, and where."""

    status: int
    message: str
    index: int | None = None
    field: str | None = None

    def body(self) -> dict:
        found = {"error": self.message}
        if self.index is not None:
            found["index"] = self.index
        if self.field is not None:
            found["field"] = self.field
        return found


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def read_token(config: ServeConfig) -> str | None:
    """The bearer token (``--token-file``); refuses to go on without one where the host is
    not loopback."""
    if config.token_file is None:
        if not is_loopback(config.host):
            raise ValueError(f"--host {config.host} is not loopback: give --token-file (a "
                             f"bearer token every request but /health must carry)")
        return None
    token = Path(config.token_file).read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{config.token_file}: the token is shorter than 16 characters")
    return token


class RewardService:
    """The server's core, engine-free: checks requests against the limits, turns them into
    scoring items, scores them (with the one inference core) and shapes the answers."""

    def __init__(self, config: ServeConfig, token: str | None = None):
        from mmrm.inference import ResponseScorer

        self.config, self.token = config, token
        self.scorer = ResponseScorer(config.model, config.dtype, threads=config.threads,
                                     trust_remote_code=False)
        self.root = Path(config.image_root).resolve() if config.image_root else None
        self._templates = None

    # ------------------------------------------------------------------ the request
    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        given = (header or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    def parse_json(self, raw: bytes) -> dict:
        if len(raw) > self.config.max_body_bytes:
            raise RequestError(413, f"body of {len(raw)} bytes exceeds the limit of "
                                    f"{self.config.max_body_bytes}")
        from mmrm.formats import decode_json
        from mmrm.ledger import FieldProblem

        try:
            body, end = decode_json(raw.decode("utf-8"))
            if raw[end:].strip():
                raise ValueError("extra data after the JSON value")
        except FieldProblem as problem:
            raise RequestError(400, f"body: {problem.problem}", field=problem.field) from None
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(400, f"body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "body: expected a JSON object")
        return body

    def items_of_score(self, body: dict) -> list[dict]:
        """``/score``'s items, each checked (``index``, ``field`` named on a problem)."""
        items = self._list(body, "items")
        found = []
        for n, raw in enumerate(items):
            if not isinstance(raw, dict):
                raise RequestError(400, "expected an object", n, "items")
            responses = raw.get("responses")
            if not isinstance(responses, list) or not responses:
                raise RequestError(400, "expected a non-empty list of strings", n, "responses")
            if len(responses) > self.config.max_responses:
                raise RequestError(413, f"{len(responses)} responses exceed the limit of "
                                        f"{self.config.max_responses} per item", n,
                                   "responses")
            texts = [self._text({"response": r}, "response", n) for r in responses]
            image = raw.get("image")
            if (image is None) == (raw.get("img_path") is None):
                raise RequestError(400, "give exactly one of image (base64) and img_path", n,
                                   "image")
            found.append({"line": n, "prompt": self._text(raw, "prompt", n),
                          "responses": texts, **self._image(raw, n)})
        return found

    def items_of_get_reward(self, body: dict) -> list[dict]:
        """``/get_reward``'s queries as one-response items (``images`` aligned, optional)."""
        queries = self._list(body, "query")
        prompts = body.get("prompts")
        images = body.get("images")
        for name, value in (("prompts", prompts), ("images", images)):
            if value is not None and (not isinstance(value, list)
                                      or len(value) != len(queries)):
                raise RequestError(400, f"expected a list as long as query ({len(queries)})",
                                   field=name)
        found = []
        for n, query in enumerate(queries):
            query = self._text({"query": query}, "query", n)
            given = prompts[n] if prompts is not None else None
            prompt, response = self.split(query, given if isinstance(given, str) else None, n)
            image = images[n] if images is not None else None
            picture = self._image({"image": image}, n) if image is not None else \
                {"image": self.blank()}
            found.append({"line": n, "prompt": prompt, "responses": [response], **picture})
        return found

    def _list(self, body: dict, key: str) -> list:
        value = body.get(key)
        if not isinstance(value, list) or not value:
            raise RequestError(400, "expected a non-empty list", field=key)
        if len(value) > self.config.max_items:
            raise RequestError(413, f"{len(value)} entries exceed the limit of "
                                    f"{self.config.max_items} per request", field=key)
        return value

    @staticmethod
    def _text(raw: dict, key: str, n: int) -> str:
        from mmrm.formats import text_field
        from mmrm.ledger import FieldProblem

        try:
            return text_field(raw, key)
        except FieldProblem as problem:
            raise RequestError(400, problem.problem, n, key) from None

    def _image(self, raw: dict, n: int) -> dict:
        """An item's image, checked like every input: base64 that decodes to an image under
        the pixel cap, or a path inside the server's image root."""
        from mmrm.images import inspect_image, open_rgb, resolve_image_path
        from mmrm.ledger import FieldProblem

        try:
            if raw.get("image") is not None:
                if not isinstance(raw["image"], str):
                    raise FieldProblem("image", "expected a base64 string", "wrong_type")
                try:
                    data = base64.b64decode(raw["image"], validate=True)
                except (binascii.Error, ValueError):
                    raise FieldProblem("image", "not valid base64", "bad_base64") from None
                inspect_image(data, max_pixels=self.config.max_image_pixels, field="image")
                return {"image": open_rgb(io.BytesIO(data))}
            if self.root is None:
                raise FieldProblem("img_path", "this server takes images as base64 only "
                                               "(it was started without --image-root)",
                                   "no_image_root")
            path = resolve_image_path(str(raw["img_path"]), self.root, root_is_explicit=True)
            inspect_image(path, max_pixels=self.config.max_image_pixels)
            return {"image_file": path}
        except FieldProblem as problem:
            raise RequestError(400, problem.problem, n, problem.field) from None

    @staticmethod
    def blank():
        from mmrm.data import blank_image

        return blank_image()

    def split(self, query: str, prompt: str | None, n: int) -> tuple[str, str]:
        """A full query text as (prompt, response): after ``prompt`` where the query starts
        with it (the chat template taken off the prompt where it is the model's); else at
        the model's own chat template (the text between the user turn and the assistant
        turn). A query that fits neither is refused."""
        if prompt is not None and query.startswith(prompt) and query[len(prompt):].strip():
            return self._unwrap(prompt) or prompt, query[len(prompt):]
        for head, between, tail in self.templates():
            body = query[len(head):] if query.startswith(head) else None
            if body is None:
                continue
            body = body[:-len(tail)] if tail and body.endswith(tail) else body
            user, sep, response = body.rpartition(between)
            if sep and user.strip() and response.strip():
                return user, response
        raise RequestError(400, "cannot split the query into prompt and response: give "
                                "prompts[i] (the query's start), or a query in the reward "
                                "model's chat template", n, "query")

    def _unwrap(self, prompt: str) -> str | None:
        """The user text of a prompt rendered in the model's template, if it is."""
        for head, between, _ in self.templates():
            if prompt.startswith(head) and prompt.endswith(between):
                inner = prompt[len(head):len(prompt) - len(between)]
                if inner.strip():
                    return inner
        return None

    def templates(self) -> list[tuple[str, str, str]]:
        """The text around prompt and response in the model's chat template, with the image
        and without (queries rendered by a text-only policy)."""
        from mmrm.data import filled_template

        if self._templates is None:
            self._templates = []
            for with_image in (True, False):
                parts = filled_template(self.scorer.processor, with_image=with_image)._full
                if parts is not None:
                    self._templates.append(tuple(parts))
        return self._templates

    # ------------------------------------------------------------------ the answer
    def score(self, items: list[dict]) -> list[list[float]]:
        """Rewards of every response of ``items`` (in order), normalised where the server
        was started with --normalize."""
        scored: dict = {}
        for chunk in self._chunks(items):
            for result in self.scorer.score(chunk)["results"]:
                if "error" in result:
                    line = result["line"]
                    raise RequestError(422, f"cannot score: {result['error']}",
                                       line[1] if isinstance(line, tuple) else line)
                scored[result["line"]] = result["scores"]
        rewards = [scored[it["line"]] for it in items]
        if self.config.normalize:
            mean = self.scorer.model.config.reward_mean
            std = self.scorer.model.config.reward_std
            rewards = [[(r - mean) / std for r in rs] for rs in rewards]
        return rewards

    def _chunks(self, items: list[dict]):
        """Items in forwards of at most ``batch_responses`` responses (an item whole)."""
        chunk, size = [], 0
        for item in items:
            if chunk and size + len(item["responses"]) > self.config.batch_responses:
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += len(item["responses"])
        if chunk:
            yield chunk

    def info(self) -> dict:
        from mmrm.model import model_digest

        limits = {k: getattr(self.config, k) for k in (
            "max_body_bytes", "max_items", "max_responses", "max_image_pixels",
            "request_timeout_s")}
        return {"model": str(self.config.model), "digest": model_digest(self.config.model),
                "dtype": self.config.dtype, "normalize": self.config.normalize,
                "image_root": str(self.root) if self.root else None, "limits": limits,
                "endpoints": ["/score", "/get_reward", "/health", "/info"]}


def deployment(config: ServeConfig, token: str | None):
    """The Ray Serve application: one deployment of ``config.replicas`` replicas, each a
    :class:`RewardService`, requests from concurrent clients batched."""
    from ray import serve
    from starlette.responses import JSONResponse

    @serve.deployment(name="mmrm-reward", num_replicas=config.replicas,
                      ray_actor_options={"num_cpus": 0 if config.gpus_per_replica else
                                         config.threads,
                                         "num_gpus": config.gpus_per_replica},
                      max_ongoing_requests=config.max_ongoing_requests,
                      health_check_period_s=2, health_check_timeout_s=30)
    class RewardServer:
        def __init__(self):
            if is_loopback(config.host):
                bind_replica_grpc_to_loopback()
            self.service = RewardService(config, token)

        @serve.batch(max_batch_size=config.batch_requests, batch_wait_timeout_s=0.01)
        async def score_batch(self, requests: list[list[dict]]) -> list:
            """Concurrent requests' items scored together; a request whose items cannot be
            scored gets its error, the others their rewards."""
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, score_requests, self.service, requests)

        async def __call__(self, request):
            try:
                return JSONResponse(await self.route(request))
            except RequestError as error:
                return JSONResponse(error.body(), status_code=error.status)

        async def route(self, request) -> dict:
            path = request.url.path.rstrip("/") or "/"
            if path.endswith("/health"):
                return {"status": "ok"}
            if not self.service.authorized(request.headers.get("authorization")):
                raise RequestError(401, "missing or wrong bearer token")
            if path.endswith("/info"):
                return self.service.info()
            if request.method != "POST" or not path.endswith(("/score", "/get_reward")):
                raise RequestError(404, f"no endpoint {request.method} {path}")
            body = self.service.parse_json(await read_capped(request, config.max_body_bytes))
            if path.endswith("/score"):
                return {"rewards": answer(await self.score_batch(
                    self.service.items_of_score(body)))}
            rewards = [r[0] for r in answer(await self.score_batch(
                self.service.items_of_get_reward(body)))]
            return {"rewards": rewards, "scores": rewards}

    return RewardServer.bind()


def bind_replica_grpc_to_loopback() -> None:
    """Ray Serve 2.60's replica opens its inter-deployment gRPC server on ``[::]:0`` (every
    interface) after the deployment's constructor runs; for a loopback server this rebinds
    it to 127.0.0.1 by wrapping the one function the replica calls (a private Ray name: if
    it moves, this does nothing and the socket test says so)."""
    try:
        import ray.serve._private.replica as replica
    except ImportError:
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "mmrm_loopback", False):
        return

    def loopback(server, address: str):
        return bind(server, address.replace("[::]:", "127.0.0.1:", 1))

    loopback.mmrm_loopback = True
    replica.add_port_to_grpc_server = loopback


def score_requests(service: RewardService, requests: list[list[dict]]) -> list:
    """Rewards of each request's items, scored in one pass; if that fails, request by
    request, so that one request's unscorable item costs only that request (its
    :class:`RequestError` in its place)."""
    flat = [dict(it, line=(r, it["line"])) for r, items in enumerate(requests) for it in items]
    try:
        rewards = service.score(flat)
    except RequestError:
        if len(requests) == 1:
            return [error_of(service, requests[0])]
        return [score_requests(service, [items])[0] for items in requests]
    out = [[] for _ in requests]
    for item, reward in zip(flat, rewards):
        out[item["line"][0]].append(reward)
    return out


def error_of(service: RewardService, items: list[dict]):
    """The rewards of one request's items, or the error that stops them."""
    try:
        return service.score(items)
    except RequestError as error:
        return error


def answer(result):
    """A request's scored result, or its error raised."""
    if isinstance(result, RequestError):
        raise result
    return result


async def read_capped(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes: a 10 GB body is
    never held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def serve_model(config: ServeConfig, log=print, block: bool = True) -> str:
    """Start Ray (a local cluster on 127.0.0.1, or ``--address``), Serve's proxy on
    ``host:port`` and the deployment; block until interrupted (SIGINT / SIGTERM), then stop
    what was started. Returns the base URL."""
    import ray
    from ray import serve

    from mmrm.model import check_reward_model
    from mmrm.score import start_ray

    token = read_token(config)                  # before anything starts
    check_reward_model(config.model)
    started = not ray.is_initialized()
    if started:
        start_ray(config.address)
    serve.start(http_options={"host": config.host, "port": config.port,
                              "request_timeout_s": config.request_timeout_s})
    serve.run(deployment(config, token), name="mmrm", route_prefix="/")
    url = f"http://{config.host}:{config.port}"
    log(json.dumps({"serving": url, "model": str(config.model), "replicas": config.replicas,
                    "token": token is not None}))
    if not block:
        return url
    try:
        wait_for_signal()
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    return url


def wait_for_signal() -> None:
    """Sleep until SIGINT or SIGTERM."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def resolve_model(model: str) -> str:
    """A saved RM folder, or a registry URI (``models:/mmrm-reward-model@champion``) whose
    logged RM folder is downloaded from MLflow."""
    if not model.startswith("models:/"):
        return model
    import mlflow

    from mmrm.lineage import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    local = Path(mlflow.artifacts.download_artifacts(model))
    folder = local / "artifacts" / "reward_model"
    if not folder.is_dir():
        raise ValueError(f"{model}: the registered model holds no reward_model artifact "
                         f"(not an mmrm reward model?)")
    return str(folder)

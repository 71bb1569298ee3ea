"""The model side of ``mmrm serve``: :class:`RewardService` scores checked items with the one
inference core, and :func:`deployment` wraps it in a Ray Serve deployment whose replicas
batch concurrent requests (``serve.batch``), answer each request with a status and a body,
and stop scoring a request whose client is gone (the HTTP front cancels it; a batch in
progress skips its remaining chunks)."""

from __future__ import annotations

import asyncio
import threading
import time

from mmrm.config import ServeConfig
from mmrm.serve.requests import ImageIndex, RequestError, RequestParser


class Cancelled(Exception):
    """The request's client gave up (or its time ran out) while it was being scored."""


class RewardService:
    """A model and the parser of its requests: checked items in, rewards out (normalised
    where the server was started with ``normalize=true``). Plain Python: tests call it without
    Ray."""

    def __init__(self, config: ServeConfig):
        from mmrm.data import filled_template
        from mmrm.inference import ResponseScorer
        from mmrm.serve import templates

        self.config = config
        self.scorer = ResponseScorer(config.model, config.dtype, threads=config.threads,
                                     trust_remote_code=False, normalize=config.normalize)
        own = []
        for with_image in (True, False):
            parts = filled_template(self.scorer.processor, with_image=with_image)._full
            if parts is not None:
                own.append(templates.literal_shape("reward model", *parts))
        index = ImageIndex(config.images_from, config.max_image_pixels, config.image_root) \
            if config.images_from else None
        self.parser = RequestParser(config, self.scorer.processor, own, index)

    def items(self, endpoint: str, raw: bytes) -> list[dict]:
        """A request body's checked items (:class:`RequestParser`)."""
        body = self.parser.parse_json(raw)
        if endpoint == "/score":
            return self.parser.items_of_score(body)
        return self.parser.items_of_get_reward(body)

    def score(self, items: list[dict], cancelled: threading.Event | None = None
              ) -> list[list[float]]:
        """Rewards of every response of ``items`` (in order), in forwards of at most
        ``batch_responses`` responses; stops between them once ``cancelled`` is set."""
        scored: dict = {}
        for chunk in self._chunks(items):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled()
            for result in self.scorer.score(chunk)["results"]:
                line = result["line"]
                if "error" in result:
                    raise RequestError(422, f"cannot score: {result['error']}",
                                       line[1] if isinstance(line, tuple) else line,
                                       reason="unscorable")
                scored[line] = result["scores"]
        return [scored[it["line"]] for it in items]

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

    def warm_up(self) -> float:
        """Score one tiny item: the model answers (``/health`` says ready only after this).
        Returns the seconds it took."""
        from mmrm.data import blank_image

        started = time.perf_counter()
        self.score([{"line": 0, "prompt": "ready?", "responses": ["yes"],
                     "image": blank_image()}])
        return time.perf_counter() - started

    def info(self) -> dict:
        from mmrm.model import model_digest

        c = self.config
        limits = {k: getattr(c, k) for k in (
            "max_body_bytes", "max_header_bytes", "max_items", "max_responses", "max_tokens",
            "max_image_pixels", "max_request_pixels", "max_aspect_ratio", "request_timeout_s",
            "header_timeout_s", "body_timeout_s", "batch_requests", "batch_responses",
            "max_ongoing_requests")}
        index = self.parser.index
        images = (f"index:{c.images_from} ({len(index.by_prompt)} prompts)" if index else
                  "request") + (", else blank (text-only)" if c.text_only else "")
        return {"model": str(c.model), "digest": model_digest(c.model), "dtype": c.dtype,
                "normalize": c.normalize, "image_root": str(self.parser.root)
                if self.parser.root else None, "images": images,
                "policy_template": c.policy_template or "known families: " + ", ".join(
                    dict.fromkeys(s.name for s in self.parser.shapes)),
                "limits": limits, "empty_response": "scored as the empty answer",
                "endpoints": ["/score", "/get_reward", "/health", "/info", "/metrics"]}


class Job:
    """One request's items in a batch, and whether its client has gone."""

    def __init__(self, items: list[dict]):
        self.items, self.cancelled = items, threading.Event()


def score_jobs(service: RewardService, jobs: list[Job]) -> list:
    """Rewards of each job's items, scored together; if that fails, job by job, so that one
    request's unscorable item costs only that request (its error in its place). A job whose
    client has gone is skipped (:class:`Cancelled` in its place)."""
    live = [(k, job) for k, job in enumerate(jobs) if not job.cancelled.is_set()]
    out: list = [Cancelled() for _ in jobs]
    if not live:
        return out
    flat = [dict(it, line=(k, it["line"])) for k, job in live for it in job.items]
    gone = threading.Event()
    watcher = _AllCancelled([job for _, job in live], gone)
    try:
        rewards = service.score(flat, gone)
    except (RequestError, Cancelled):
        if len(live) == 1:
            k, job = live[0]
            out[k] = _one(service, job)
            return out
        for k, job in live:
            out[k] = _one(service, job)
        return out
    finally:
        watcher.stop()
    for k, _ in live:
        out[k] = []
    for item, reward in zip(flat, rewards):
        out[item["line"][0]].append(reward)
    return out


def _one(service: RewardService, job: Job):
    try:
        return service.score(job.items, job.cancelled)
    except (RequestError, Cancelled) as error:
        return error


class _AllCancelled:
    """Sets ``gone`` once every job of a batch is cancelled (a batch stops only when no
    client is left; a single job's cancel is seen when the batch falls back to one by one)."""

    def __init__(self, jobs: list[Job], gone: threading.Event):
        self.jobs, self.gone, self.done = jobs, gone, threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while not self.done.wait(0.05):
            if all(job.cancelled.is_set() for job in self.jobs):
                self.gone.set()
                return

    def stop(self):
        self.done.set()


async def answer_request(service: RewardService, score_batch, endpoint: str, raw: bytes
                         ) -> dict:
    """One request's answer: its items parsed and checked, scored in a batch with other
    requests (``score_batch``), shaped for its endpoint. If the caller is cancelled (its
    client gone, its time up), the batch skips what is left of it."""
    try:
        items = service.items(endpoint, raw)
    except RequestError as error:
        return {"status": error.status, "body": error.body(), "reason": error.reason}
    except Exception as err:      # noqa: BLE001 - a bug, never a replica's death
        return {"status": 500, "body": {"error": f"{type(err).__name__}: {str(err)[:300]}"},
                "reason": "internal"}
    job = Job(items)
    try:
        result = await score_batch(job)
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    if isinstance(result, RequestError):
        return {"status": result.status, "body": result.body(), "reason": result.reason}
    if isinstance(result, Cancelled):
        return {"status": 499, "body": {"error": "cancelled"}, "reason": "cancelled"}
    sources = [it["image_source"] for it in items]
    if endpoint == "/score":
        body = {"rewards": result, "images": sources}
    else:
        flat = [r[0] for r in result]
        body = {"rewards": flat, "scores": flat, "images": sources}
    return {"status": 200, "body": body, "items": len(items),
            "responses": sum(len(it["responses"]) for it in items)}


def deployment(config: ServeConfig):
    """The Ray Serve application: one deployment of ``config.replicas`` replicas, each a
    :class:`RewardService` that has scored a first item before it takes requests."""
    from ray import serve

    @serve.deployment(name="mmrm-reward", num_replicas=config.replicas,
                      ray_actor_options={"num_cpus": 0 if config.gpus_per_replica else
                                         config.threads,
                                         "num_gpus": config.gpus_per_replica},
                      max_ongoing_requests=config.max_ongoing_requests,
                      health_check_period_s=2, health_check_timeout_s=30)
    class RewardReplica:
        def __init__(self):
            from mmrm.serve.network import bind_replica_grpc_to_loopback, is_loopback

            if is_loopback(config.host):
                bind_replica_grpc_to_loopback()
            self.service = RewardService(config)
            self.warm_seconds = self.service.warm_up()

        @serve.batch(max_batch_size=config.batch_requests,
                     batch_wait_timeout_s=config.batch_wait_s)
        async def score_batch(self, jobs: list[Job]) -> list:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, score_jobs, self.service, jobs)

        async def handle(self, endpoint: str, raw: bytes) -> dict:
            """One request: ``{"status", "body", "items", "responses", "reason"}``."""
            return await answer_request(self.service, self.score_batch, endpoint, raw)

        def info(self) -> dict:
            return self.service.info()

        def ready(self) -> dict:
            return {"status": "ready", "warm_up_seconds": round(self.warm_seconds, 3)}

        def check_health(self):
            if self.warm_seconds is None:           # pragma: no cover - Serve's probe
                raise RuntimeError("the model has not answered")

    return RewardReplica.bind()

"""Batch scoring with Ray, a thin driver over :mod:`mmrm.inference`: many candidate responses
per (prompt, image), in input order, resumable, and robust to a worker dying.

``mmrm score MODEL INPUT.jsonl OUTPUT.jsonl`` reads the inference format
``{"prompt", "img_path", "responses": [...], "id"?}`` and writes one line per input item, in
input order: the input fields plus ``scores`` (one per response) and ``best`` (the index of the
highest score).

How it runs:

* **Workers** are Ray actors (:class:`~mmrm.inference.ResponseScorer`), each holding the
  reward model; a
  GPU each, a fraction of a GPU, or CPU threads. Batches go to whichever actor is free
  (:class:`ray.util.ActorPool`); Ray restarts an actor that dies and retries its batch
  (``max_restarts`` / ``max_task_retries``), so a killed worker costs time, not items.
* **Efficiency**: an item's image is preprocessed once and encoded once for all its
  responses, and the prompt (image tokens + question) runs through the model once: its
  key/value cache is reused by every response (:func:`~mmrm.inference.encode_group`;
  backbones with 3-D positions, Qwen2-VL, fall back to whole sequences, which still share the
  image features). Batches are cut by token length within a window of items; within a
  batch, the responses run after the shared prompts in ``length_buckets`` groups of similar
  length, so a short response is not padded to the longest of the batch.
* **Order, chunks and resume**: items are taken in windows of ``chunk_items``; a window's
  lines are appended to OUTPUT (and bad items to the errors file) only once the whole window
  and every window before it are scored, then ``OUTPUT.state.json`` is replaced atomically
  with the input's sha256, the next input line and the byte length of both files. A rerun
  with the same OUTPUT truncates both files to the recorded length (dropping a chunk that was
  half-written when the driver died) and goes on from the next line: no item is scored twice
  or lost. The key is the input line number plus the input file's hash, the model's files,
  dtype and normalisation; a run that differs in any of them refuses to resume.
* **The state of a call** is a :class:`ScoreRun`: the windows in flight, the results not yet
  written, the reader's ledger and the totals.
* **The local cluster** (:func:`mmrm.cluster.start_ray`) listens on 127.0.0.1 only, with
  Ray's token authentication as Ray sets it; ``address=`` / ``RAY_ADDRESS`` joins a cluster
  instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmrm.cluster import start_ray
from mmrm.config import ScoreConfig
from mmrm.formats import ImageCheck, ImageRules, InferenceRecord, read_inference
from mmrm.images import sha256_file
from mmrm.inference import ResponseScorer, encode_groups
from mmrm.ledger import Ledger, OnError, RecordError
from mmrm.model import model_digest
from mmrm.outputs import exclusive, refuse_overwriting_inputs, write_atomic

__all__ = ["ScoreConfig", "ResponseScorer", "score_file", "preprocess_where"]

STATE_SUFFIX = ".state.json"
#: Test hook: seconds each batch sleeps inside the actor (read when a run starts, so a test
#: can kill a run halfway).
BATCH_DELAY_ENV = "MMRM_TEST_BATCH_DELAY"


@dataclass
class ScoreState:
    """What ``OUTPUT.state.json`` records between chunks: the run's identity (input, model
    files, dtype, normalisation: a resume must match every one) and how far it got."""

    input: str
    input_sha256: str
    model: str
    model_digest: str = ""
    dtype: str = ""
    normalize: bool = False
    next_line: int = 1
    items_written: int = 0
    items_failed: int = 0
    output_bytes: int = 0
    errors_bytes: int = 0
    complete: bool = False
    extra: dict = field(default_factory=dict)


def _write_state(path: Path, state: ScoreState) -> None:
    write_atomic(path, json.dumps(asdict(state), indent=2) + "\n")


def _open_run(config: ScoreConfig) -> ScoreState:
    """A fresh state, or the saved one (after truncating the outputs to its byte counts)."""
    out, errors = Path(config.output), config.errors_path
    state_path = out.with_name(out.name + STATE_SUFFIX)
    refuse_overwriting_inputs([Path(config.input)], {"OUTPUT": out, "--errors": errors,
                                                     "OUTPUT's state": state_path})
    digest = sha256_file(config.input)
    identity = {"model_digest": model_digest(config.model), "dtype": config.dtype,
                "normalize": config.normalize}
    if state_path.exists():
        state = _read_state(state_path)
        if state.input_sha256 != digest:
            raise ValueError(f"{out}: was written for another input (sha256 "
                             f"{state.input_sha256[:12]}..., {config.input} is "
                             f"{digest[:12]}...); remove it and {state_path} to start over")
        changed = [f"{key} ({getattr(state, key)!r} then, {value!r} now)"
                   for key, value in identity.items() if getattr(state, key) != value]
        if changed:
            raise ValueError(f"{out}: was scored with another {', '.join(changed)}; mixing "
                             f"scores would be wrong: remove it and {state_path} to start over, "
                             f"or choose another output")
        for path, size in ((out, state.output_bytes), (errors, state.errors_bytes)):
            have = path.stat().st_size if path.is_file() else None
            if have is None or have < size:
                raise ValueError(f"{state_path}: records {size} bytes of {path}, which "
                                 f"{'is missing' if have is None else f'has {have}'}: the "
                                 f"state does not match its output; remove {state_path} (and "
                                 f"what is left of the outputs) to start over")
        for path, size in ((out, state.output_bytes), (errors, state.errors_bytes)):
            with open(path, "ab") as f:
                f.truncate(size)
        return state
    for name, path in (("OUTPUT", out), ("--errors", errors)):
        if path.exists():      # a user's file is never emptied: OUTPUT and --errors alike
            raise ValueError(f"{path} ({name}) exists and has no {state_path.name}: not a "
                             f"run to resume; remove it or choose another {name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    errors.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"")
    errors.write_bytes(b"")
    state = ScoreState(input=str(config.input), input_sha256=digest, model=str(config.model),
                       **identity)
    _write_state(state_path, state)
    return state


def _read_state(path: Path) -> ScoreState:
    try:
        raw = json.loads(path.read_text())
        return ScoreState(**{k: v for k, v in raw.items() if k != "extra"})
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a scoring state this mmrm can resume ({err}); remove "
                         f"it and the output to start over") from None


def _windows(config: ScoreConfig, start_line: int, ledger: Ledger, bad: list[RecordError]
             ) -> Iterator[tuple[list[InferenceRecord], int]]:
    """Windows of valid items from ``start_line`` on, each with the input line it ends
    before; bad lines are collected into ``bad`` (under skip) as the reader meets them."""
    rules = ImageRules(root=Path(config.image_root) if config.image_root else None,
                       check=ImageCheck.HEADER)
    window: list[InferenceRecord] = []
    for record in read_inference(config.input, images=rules, ledger=ledger):
        if record.line < start_line:
            continue
        window.append(record)
        if len(window) == config.chunk_items:
            yield window, record.line + 1
            window = []
    yield window, None   # the rest, up to the end of the file


#: Batches' worth of responses sorted by length together (more: less padding; fewer: the
#: workers start sooner).
SORT_BATCHES = 8


def _sort_groups(items: list[InferenceRecord], batch_responses: int
                 ) -> Iterator[list[InferenceRecord]]:
    """Consecutive runs of items holding about ``SORT_BATCHES`` batches of responses."""
    group, count = [], 0
    for it in items:
        group.append(it)
        count += len(it.responses)
        if count >= SORT_BATCHES * batch_responses:
            yield group
            group, count = [], 0
    if group:
        yield group


def _batches(items: list[InferenceRecord], tokenizer, max_responses: int) -> list[list[dict]]:
    """Items sorted by token length (prompt + longest response), packed up to
    ``max_responses`` responses per batch (an item is never split)."""
    texts = [it.prompt for it in items] + [r for it in items for r in it.responses]
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    lengths, at = [], len(items)
    for i, it in enumerate(items):
        lengths.append(counts[i] + max(counts[at:at + len(it.responses)]))
        at += len(it.responses)
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    batches, current, count = [], [], 0
    for i in order:
        it = items[i]
        if current and count + len(it.responses) > max_responses:
            batches.append(current)
            current, count = [], 0
        current.append({"line": it.line, "prompt": it.prompt, "responses": list(it.responses),
                        "image_file": str(it.image_file)})
        count += len(it.responses)
    if current:
        batches.append(current)
    return batches


def score_file(config: ScoreConfig, progress: Callable[[dict], None] | None = None,
               show_bar: bool = False) -> dict:
    """Score ``config.input`` into ``config.output`` with Ray actors; resumes if it can.

    Args:
        progress: called after every scored batch with ``{"items", "worker", "actor",
            "actors"}`` (Ray names of the actor that scored it and of all; tests use them to
            kill a busy actor mid-run).
        show_bar: a tqdm bar with items/s, responses/s and ETA.

    Returns:
        The counts of this call (items scored, skipped, read) and the workers seen.

    Raises:
        ValueError: an output that is the input, another process writing the same output
            (it holds OUTPUT's lock), or a state that does not match its output.
    """
    from mmrm.model import check_model_whole

    where = preprocess_where(config)
    check_model_whole(config.model, config.trust_remote_code)   # before Ray starts
    out = Path(config.output)
    state_path = out.with_name(out.name + STATE_SUFFIX)
    with exclusive(out, str(out)):
        fresh = not state_path.exists()
        state = _open_run(config)
        if state.complete:
            return {"items_scored": 0, "already_complete": True, **asdict(state)}
        try:
            return _score_run(config, state, where, progress, show_bar)
        except BaseException:
            # a new run that stopped before it wrote anything (the cluster too small, the
            # model broken, a signal) leaves nothing behind
            if fresh and not state.items_written and not state.items_failed:
                for path in (out, config.errors_path, state_path):
                    path.unlink(missing_ok=True)
            raise


def _score_run(config: ScoreConfig, state: ScoreState, where: str, progress, show_bar
               ) -> dict:
    """The Ray part of :func:`score_file`: actors, the driver's loop, the totals."""
    import ray
    from ray.util import ActorPool

    from mmrm.model import load_processor

    started_ray = not ray.is_initialized()
    if started_ray:
        start_ray(config.address or os.environ.get("RAY_ADDRESS") or None)
    try:
        check_resources(config)
    except ValueError:
        if started_ray:
            ray.shutdown()
        raise
    names, actors = _start_actors(config)
    try:
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as err:        # one line, not a worker's traceback
            raise ValueError(f"{config.model}: the scorers could not load it: "
                             f"{root_cause(err)}") from None
        processor = load_processor(config.model, config.trust_remote_code)
        share = _shares_prefix(config.model)
        prepare = (lambda batch: encode_groups(processor, batch, share)) \
            if where == "driver" else (lambda batch: None)
        run = ScoreRun(config, state, progress, names, _bar(show_bar, config.input))
        # each actor appears twice: one batch runs while the next waits in its queue, so a
        # worker never idles while the driver prepares, collects and writes
        totals = run.drive(ActorPool(actors * 2), processor.tokenizer, prepare)
        totals["preprocess"] = where
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()
    return totals


def root_cause(err: BaseException) -> str:
    """The innermost ``SomethingError: message`` line of a Ray error's text (its remote
    traceback), without the traceback."""
    import re

    lines = [line.strip() for line in str(err).splitlines()]
    found = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    return (found[-1].split(": ", 1)[1] if found else lines[-1] if lines else str(err))[:500]


def _start_actors(config: ScoreConfig) -> tuple[list[str], list]:
    """The named scorer actors (CPU threads or GPU shares each), restarted by Ray if they
    die, their batches retried."""
    import ray

    # a worker's threads are its torch threads: the tokenizer's own pool and busy-waiting
    # OpenMP threads would compete with them on the worker's CPUs
    actor_env = {"TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    actor_class = ray.remote(num_cpus=0 if config.gpus_per_worker else config.threads_per_worker,
                             num_gpus=config.gpus_per_worker, max_restarts=-1,
                             max_task_retries=3,
                             runtime_env={"env_vars": actor_env})(ResponseScorer)
    run_id = hashlib.sha256(f"{Path(config.output).resolve()}-{time.time_ns()}".encode()
                            ).hexdigest()[:8]
    names = [f"mmrm-scorer-{run_id}-{i}" for i in range(config.workers)]
    delay = float(os.environ.get(BATCH_DELAY_ENV) or 0)
    actors = [actor_class.options(name=name).remote(
        config.model, config.dtype, config.threads_per_worker, name=name, batch_delay=delay,
        length_buckets=config.length_buckets, trust_remote_code=config.trust_remote_code,
        normalize=config.normalize) for name in names]
    return names, actors


def _shares_prefix(model_dir: str) -> bool:
    from mmrm.model import can_share_prefix

    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "")
    return can_share_prefix(model_type)


def check_resources(config: ScoreConfig) -> None:
    """The workers fit the cluster: ``workers`` x ``threads_per_worker`` CPUs (CPU workers)
    or ``workers`` x ``gpus_per_worker`` GPUs, else a one-line error before any actor is
    asked for (Ray would wait for resources that never come)."""
    import ray

    have = ray.cluster_resources()
    kind, need = ("GPU", config.workers * config.gpus_per_worker) if config.gpus_per_worker \
        else ("CPU", config.workers * config.threads_per_worker)
    if need > have.get(kind, 0) + 1e-9:
        per = f"{config.gpus_per_worker:g} GPU" if kind == "GPU" else \
            f"{config.threads_per_worker} thread(s)"
        raise ValueError(f"{config.workers} workers x {per} need {need:g} {kind}s; the Ray "
                         f"cluster has {have.get(kind, 0):g}: ask for fewer (workers=, "
                         f"gpus_per_worker=, threads_per_worker=)")


def preprocess_where(config: ScoreConfig) -> str:
    """``driver`` or ``worker``: where ``config.preprocess`` puts the CPU work."""
    if config.preprocess != "auto":
        return config.preprocess
    if config.gpus_per_worker or config.address or os.environ.get("RAY_ADDRESS"):
        return "driver"
    busy = config.workers * config.threads_per_worker
    return "driver" if busy < (os.cpu_count() or 1) else "worker"


@dataclass
class Window:
    """A chunk of input lines: written only when all its batches are back and every earlier
    window is written."""

    lines: list[int]
    end: int | None          # the input line it ends before (None: the end of the file)
    pending: int = 0

    def __post_init__(self):
        self.line_set = set(self.lines)


@dataclass
class ScoreRun:
    """One scoring run in progress: its config and saved state, the reader's ledger and bad
    lines, the items in flight and their results, and the windows waiting to be written."""

    config: ScoreConfig
    state: ScoreState
    progress: Callable[[dict], None] | None = None
    actor_names: list[str] = field(default_factory=list)
    bar: object = None
    bad: list[RecordError] = field(default_factory=list)
    items: dict[int, InferenceRecord] = field(default_factory=dict)
    scored: dict[int, dict] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    totals: dict = field(default_factory=lambda: {"items_scored": 0, "items_failed": 0,
                                                  "responses": 0, "workers": set(),
                                                  "worker_seconds": 0.0})

    def __post_init__(self):
        # reader errors of lines an earlier call already wrote are not written again
        self.ledger = Ledger(on_error=OnError(self.config.on_error),
                             on_bad=lambda err: self.bad.append(err)
                             if err.line >= self.state.next_line else None)
        self.started = time.perf_counter()
        out = Path(self.config.output)
        self.out, self.errors_path = out, self.config.errors_path
        self.state_path = out.with_name(out.name + STATE_SUFFIX)

    def drive(self, pool, tokenizer, prepare) -> dict:
        """Submit every window's batches (with the model inputs ``prepare`` makes of them),
        write the windows in order as they complete; the totals of this call."""
        for records, end in _windows(self.config, self.state.next_line, self.ledger, self.bad):
            window = Window([r.line for r in records], end)
            self.items.update((r.line, r) for r in records)
            self.windows.append(window)
            # sorted by length a few batches at a time, so the workers start before the
            # driver has tokenized the whole window
            for batch in (b for group in _sort_groups(records, self.config.batch_responses)
                          for b in _batches(group, tokenizer, self.config.batch_responses)):
                window.pending += 1
                encoded = prepare(batch)
                while not pool.has_free():
                    self.collect(pool.get_next_unordered())
                pool.submit(lambda actor, job: actor.score.remote(*job), (batch, encoded))
            self.flush()
        while pool.has_next():
            self.collect(pool.get_next_unordered())
        return self.finish()

    def collect(self, result: dict) -> None:
        for r in result["results"]:
            self.scored[r["line"]] = r
            self.totals["responses"] += len(r.get("scores", []))
        self.totals["workers"].add(result["worker"])
        self.totals["worker_seconds"] += result["seconds"]
        owner = next(w for w in self.windows if result["results"][0]["line"] in w.line_set)
        owner.pending -= 1
        if self.progress is not None:
            self.progress({"items": len(result["results"]), "worker": result["worker"],
                           "actor": result["actor"], "actors": self.actor_names})
        if self.bar is not None:
            self.bar.update(len(result["results"]))
            self.bar.set_postfix(responses_per_s=round(
                self.totals["responses"] / (time.perf_counter() - self.started), 1))
        self.flush()

    def flush(self) -> None:
        while self.windows and self.windows[0].pending == 0:
            self.write(self.windows.pop(0))

    def write(self, window: Window) -> None:
        """Append one finished window to OUTPUT / errors in line order; then move the state."""
        lines, error_lines = [], []
        for line in window.lines:
            item, result = self.items.pop(line), self.scored.pop(line)
            if "error" in result:
                err = RecordError(self.config.input, line, "<item>", result["error"],
                                  "scoring_failed")
                if OnError(self.config.on_error) is OnError.RAISE:
                    raise err
                self.ledger.skip(err.reason, str(err))
                error_lines.append((line, {"line": line, "id": item.id, "error": str(err),
                                           "reason": err.reason}))
                continue
            lines.append(json.dumps(self.record(item, line, result["scores"]),
                                    allow_nan=False))
            self.ledger.written += 1
        # reader errors up to the window's end belong to this chunk
        while self.bad and (window.end is None or self.bad[0].line < window.end):
            err = self.bad.pop(0)
            error_lines.append((err.line, {"line": err.line, "id": None, "error": str(err),
                                           "reason": err.reason}))
        error_lines.sort(key=lambda pair: pair[0])
        state = self.state
        state.output_bytes += _append(self.out, lines)
        state.errors_bytes += _append(self.errors_path, [json.dumps(e) for _, e in error_lines])
        state.items_written += len(lines)
        state.items_failed += len(error_lines)
        state.next_line = window.end if window.end is not None else state.next_line
        self.totals["items_scored"] += len(lines)
        self.totals["items_failed"] += len(error_lines)
        _write_state(self.state_path, state)

    def record(self, item: InferenceRecord, line: int, scores: list[float]) -> dict:
        """The output line of an item: its input fields, ``scores`` and ``best``."""
        record = item.to_json()
        record["id"] = item.id if item.id is not None else f"line-{line}"
        record.update(scores=scores, best=max(range(len(scores)), key=scores.__getitem__))
        return record

    def finish(self) -> dict:
        self.flush()
        self.state.complete = True
        _write_state(self.state_path, self.state)
        if self.bar is not None:
            self.bar.close()
        seconds = time.perf_counter() - self.started
        # the share of the run the actors spent scoring: well below 1, they waited for the
        # driver (more preprocessing there than model time, or too few batches in flight)
        actors = max(len(self.actor_names), 1)
        busy = self.totals["worker_seconds"] / max(seconds * actors, 1e-9)
        totals = {**self.totals, "workers": sorted(self.totals["workers"]),
                  "seconds": round(seconds, 3),
                  "worker_seconds": round(self.totals["worker_seconds"], 3),
                  "workers_busy": round(busy, 3)}
        # the reader saw every line of the file; the state counts what every call wrote
        totals["ledger"] = {"read": self.ledger.read, "written": self.state.items_written,
                            "skipped": self.state.items_failed}
        if self.ledger.read != self.state.items_written + self.state.items_failed:
            raise AssertionError(f"{self.config.input}: read {self.ledger.read} lines but "
                                 f"wrote {self.state.items_written} + "
                                 f"{self.state.items_failed} errors")
        return totals


def _append(path: Path, lines: list[str]) -> int:
    if not lines:
        return 0
    data = ("\n".join(lines) + "\n").encode()
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return len(data)


def _bar(show: bool, name: str):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(desc=f"scoring {Path(name).name}", unit="item")

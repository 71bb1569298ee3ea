"""Batch scoring with Ray: many candidate responses per (prompt, image), in input order,
resumable, and robust to a worker dying.

``mmrm score MODEL INPUT.jsonl OUTPUT.jsonl`` reads the inference format
``{"prompt", "img_path", "responses": [...], "id"?}`` and writes one line per input item, in
input order: the input fields plus ``scores`` (one per response) and ``best`` (the index of the
highest score).

How it runs:

* **Workers** are Ray actors (:class:`ResponseScorer`), each holding the reward model; a
  GPU each, a fraction of a GPU, or CPU threads. Batches go to whichever actor is free
  (:class:`ray.util.ActorPool`); Ray restarts an actor that dies and retries its batch
  (``max_restarts`` / ``max_task_retries``), so a killed worker costs time, not items.
* **Efficiency**: an item's image is preprocessed once and encoded once for all its
  responses, and the prompt (image tokens + question) runs through the model once: its
  key/value cache is reused by every response (:func:`score_items_shared_prefix`; backbones
  with 3-D positions, Qwen2-VL, fall back to :func:`score_items`, which still shares the
  image features). Batches are cut by token length within a window of items; within a
  batch, the responses run after the shared prompts in ``length_buckets`` groups of similar
  length, so a short response is not padded to the longest of the batch.
* **Order, chunks and resume**: items are taken in windows of ``chunk_items``; a window's
  lines are appended to OUTPUT (and bad items to the errors file) only once the whole window
  and every window before it are scored, then ``OUTPUT.state.json`` is replaced atomically
  with the input's sha256, the next input line and the byte length of both files. A rerun
  with the same OUTPUT truncates both files to the recorded length (dropping a chunk that was
  half-written when the driver died) and goes on from the next line: no item is scored twice
  or lost. The key is the input line number plus the input file's hash; a different input
  refuses to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from mmrm.formats import ImageCheck, ImageRules, InferenceRecord, read_inference
from mmrm.images import sha256_file
from mmrm.ledger import Ledger, OnError, RecordError

STATE_SUFFIX = ".state.json"
#: Test hook: seconds each batch sleeps inside the actor (read by the driver at start, so a
#: test can kill a run halfway).
BATCH_DELAY_ENV = "MMRM_TEST_BATCH_DELAY"


@dataclass
class ScoreConfig:
    """One scoring run.

    Args:
        model: saved reward model directory.
        input: inference JSONL.
        output: JSONL to write (``OUTPUT.state.json`` beside it while it is in progress).
        errors: where bad items go (default ``OUTPUT`` with ``.errors.jsonl``).
        workers: scorer actors.
        gpus_per_worker: 1 = a GPU each, 0.5 = two per GPU, 0 = CPU.
        threads_per_worker: torch threads of a CPU worker.
        batch_responses: responses per forward (items are packed up to this many).
        length_buckets: a batch's responses run in up to this many groups of similar length
            after the shared prompts (less padding; see
            :meth:`~mmrm.model.RewardModel.forward_shared_prefix`).
        chunk_items: items per written chunk (the resume granularity).
        normalize: scores as ``(r - reward_mean) / reward_std`` from the model's config.
        on_error: raise at the first bad item, or skip it into the errors file.
        address: Ray cluster to join (default ``RAY_ADDRESS``, else a local one).
        image_root: root of ``img_path`` (default: the input file's folder).
        dtype: ``bf16`` / ``fp16`` / ``fp32`` weights on the workers.
        preprocess: where images are decoded and preprocessed and text is tokenized:
            ``driver`` (while the workers run the model; the driver tokenizes anyway, to
            batch by length), ``worker`` (each worker before its forward), or ``auto``:
            the driver where it has a CPU of its own (GPU workers, a remote cluster, or
            fewer worker threads than this machine's CPUs), else the workers.
        trust_remote_code: run model code shipped in the model folder (never on the folder's
            own say-so).
    """

    model: str
    input: str
    output: str
    errors: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    threads_per_worker: int = 1
    batch_responses: int = 64
    length_buckets: int = 4
    chunk_items: int = 256
    normalize: bool = False
    on_error: OnError = OnError.RAISE
    address: str | None = None
    image_root: str | None = None
    dtype: str = "fp32"
    preprocess: Literal["auto", "driver", "worker"] = "auto"
    trust_remote_code: bool = False

    @property
    def errors_path(self) -> Path:
        if self.errors:
            return Path(self.errors)
        out = Path(self.output)
        return out.with_name(out.name.removesuffix(".jsonl") + ".errors.jsonl")


# ---------------------------------------------------------------------------- the worker
class ResponseScorer:
    """Holds one reward model and scores batches of items (a Ray actor, or plain in tests)."""

    def __init__(self, model_dir: str, dtype: str = "fp32", threads: int = 1,
                 device: str | None = None, name: str = "", batch_delay: float = 0.0,
                 length_buckets: int = 4, trust_remote_code: bool = False):
        from mmrm.data import set_right_padding
        from mmrm.model import RewardModel, load_processor, weight_dtype_named

        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = RewardModel.load(model_dir, dtype=weight_dtype_named(dtype),
                                      trust_remote_code=trust_remote_code
                                      ).to(self.device).eval()
        self.processor = load_processor(model_dir, trust_remote_code)
        set_right_padding(self.processor)
        self.name, self.batch_delay = name, batch_delay
        self.length_buckets = length_buckets
        self.incarnation = f"{os.getpid()}-{time.monotonic_ns()}"

    def score(self, items: list[dict], encoded: list[dict] | None = None) -> dict:
        """Scores of each item; an item that fails is returned with its error instead.

        Args:
            items: ``{"line", "prompt", "responses", "image_file"}`` each.
            encoded: model inputs the driver already made for some of them
                (:func:`encode_groups`); the other items are encoded here.

        Returns ``{"results": [{"line", "scores"} | {"line", "error"}], "worker": the
        incarnation (process) that scored it, "actor": the actor's name}``.
        """
        if self.batch_delay:
            time.sleep(self.batch_delay)
        results = []
        by_line = {item["line"]: item for item in items}
        for group in encoded or []:
            try:
                scores = score_encoded(self.model, group, self.device, self.length_buckets)
            except Exception:      # noqa: BLE001 - the items go the per-item way below
                continue
            results += [{"line": line, "scores": s} for line, s in zip(group["lines"], scores)]
            for line in group["lines"]:
                del by_line[line]
        for group in groups_by_count(list(by_line.values())):
            try:
                scores = score_encoded(self.model, encode_group(self.processor, group,
                                                                self.model.can_share_prefix),
                                       self.device, self.length_buckets)
                results += [{"line": it["line"], "scores": s} for it, s in zip(group, scores)]
            except Exception:      # one bad item must not sink the others: retry them alone
                for item in group:
                    try:
                        scores = score_items(self.model, self.processor, [item], self.device)
                        results.append({"line": item["line"], "scores": scores[0]})
                    except Exception as err:  # noqa: BLE001 - reported per item
                        results.append({"line": item["line"],
                                        "error": f"{type(err).__name__}: {err}"})
        return {"results": results, "worker": self.incarnation, "actor": self.name}

    def ready(self) -> str:
        return self.incarnation


def groups_by_count(items: list[dict]) -> list[list[dict]]:
    """The items grouped by their number of responses (one forward per group)."""
    by_count: dict[int, list[dict]] = {}
    for item in items:
        by_count.setdefault(len(item["responses"]), []).append(item)
    return list(by_count.values())


def encode_group(processor, items: list[dict], share_prefix: bool = True) -> dict:
    """Model inputs for M items that have the same number N of responses.

    With ``share_prefix`` (and where the split is exact, :func:`~mmrm.data.split_prompts`),
    the prompts (image + question) are encoded once and the responses as their
    continuations (:meth:`~mmrm.model.RewardModel.forward_shared_prefix`); otherwise whole
    sequences, ordered response-major (``[response 0 of every item, response 1 of every
    item, ...]``) with each item's image tensors once. CPU work only (images decoded and
    preprocessed, text tokenized): the driver can do it while the workers run the model.

    Returns ``{"lines": the items' lines, "responses": N, "inputs": tensors for
    :meth:`RewardModel.forward`}``.
    """
    from mmrm.data import (encode_shared_prompts, filled_template, image_tensors, load_image,
                           preprocess_images_once, split_prompts, stack_sequences)

    n = len(items[0]["responses"])
    images = [load_image(Path(it["image_file"])) for it in items]
    split = split_prompts(processor, [it["prompt"] for it in items],
                          [[it["responses"][k] for it in items] for k in range(n)]
                          ) if share_prefix else None
    if split is not None:
        inputs = encode_shared_prompts(processor, *split, images)
    else:
        tokenizer = getattr(processor, "tokenizer", processor)
        template = filled_template(processor, (items[0]["prompt"], items[0]["responses"][0]))
        rendered = [[template.full(it["prompt"], r) for r in it["responses"]] for it in items]
        with preprocess_images_once(processor):
            encoded = [processor(text=[texts[k] for texts in rendered], images=images,
                                 return_tensors="pt", padding=True) for k in range(n)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        inputs = {**stack_sequences(encoded, pad), **image_tensors(encoded[0])}
    return {"lines": [it.get("line") for it in items], "responses": n, "inputs": inputs}


def encode_groups(processor, items: list[dict], share_prefix: bool) -> list[dict]:
    """:func:`encode_group` for each group of a batch; a group that fails to encode (a bad
    image, say) is left out, for the worker to retry item by item and report."""
    encoded = []
    for group in groups_by_count(items):
        try:
            encoded.append(encode_group(processor, group, share_prefix))
        except Exception:      # noqa: BLE001 - the worker reports it per item
            pass
    return encoded


@torch.inference_mode()
def score_encoded(model, group: dict, device="cpu", length_buckets: int = 1
                  ) -> list[list[float]]:
    """Rewards (one list of N per item) of a group made by :func:`encode_group`."""
    dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
              for k, v in group["inputs"].items()}
    n = group["responses"]
    rewards = model(**inputs, sequences_per_image=n, length_buckets=length_buckets)
    return rewards.float().cpu().view(n, -1).t().tolist()


def score_items(model, processor, items: list[dict], device="cpu") -> list[list[float]]:
    """Rewards of every response of M items that have the same number N of responses, as
    whole sequences (each item's image encoded once for its N sequences)."""
    return score_encoded(model, encode_group(processor, items, share_prefix=False), device)


def score_items_shared_prefix(model, processor, items: list[dict], device="cpu",
                              length_buckets: int = 1) -> list[list[float]] | None:
    """Like :func:`score_items`, but the prompt (image + question) runs through the model
    once per item and its key/value cache is reused by the item's N responses, which run in
    up to ``length_buckets`` groups of similar length. ``None`` where that does not apply:
    a backbone with 3-D positions, or a template / tokenizer for which prompt + response
    is not exactly the whole (:func:`~mmrm.data.split_prompts`).
    """
    if not model.can_share_prefix:
        return None
    group = encode_group(processor, items)
    if "prefix_input_ids" not in group["inputs"]:
        return None
    return score_encoded(model, group, device, length_buckets)


# ---------------------------------------------------------------------------- the driver
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def _open_run(config: ScoreConfig) -> ScoreState:
    """A fresh state, or the saved one (after truncating the outputs to its byte counts)."""
    out, errors = Path(config.output), config.errors_path
    state_path = out.with_name(out.name + STATE_SUFFIX)
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
            with open(path, "ab") as f:
                f.truncate(size)
        return state
    if out.exists():
        raise ValueError(f"{out} exists and has no {state_path.name}: not a run to resume; "
                         f"remove it or choose another output")
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


#: Files above this size enter the model digest by name, size and modification time only
#: (hashing an 8B model's 16 GB at every start would cost a minute).
DIGEST_CONTENT_LIMIT = 64 << 20


def model_digest(model_dir: str | Path) -> str:
    """A digest of a model folder's files: content for the small ones (configs, value head,
    tokenizer), name + size + mtime for weight shards over :data:`DIGEST_CONTENT_LIMIT`."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(str(path.relative_to(model_dir)).encode() + b"\0")
        if stat.st_size <= DIGEST_CONTENT_LIMIT:
            h.update(sha256_file(path).encode())
        else:
            h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()


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
    """
    import ray
    from ray.util import ActorPool

    from mmrm.data import set_right_padding
    from mmrm.model import (can_share_prefix, check_reward_model, load_processor,
                            read_reward_config, weight_dtype_named)

    where = preprocess_where(config)
    weight_dtype_named(config.dtype)   # an unknown name fails here, before Ray starts
    check_reward_model(config.model, config.trust_remote_code)     # ... and a broken model
    state = _open_run(config)
    out, errors_path = Path(config.output), config.errors_path
    state_path = out.with_name(out.name + STATE_SUFFIX)
    if state.complete:
        return {"items_scored": 0, "already_complete": True, **asdict(state)}
    started_ray = not ray.is_initialized()
    if started_ray:
        start_ray(config.address or os.environ.get("RAY_ADDRESS") or None)
    # a worker's threads are its torch threads: the tokenizer's own pool and busy-waiting
    # OpenMP threads would compete with them on the worker's CPUs
    actor_env = {"TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    actor_class = ray.remote(num_cpus=0 if config.gpus_per_worker else config.threads_per_worker,
                             num_gpus=config.gpus_per_worker, max_restarts=-1,
                             max_task_retries=3,
                             runtime_env={"env_vars": actor_env})(ResponseScorer)
    run_id = hashlib.sha256(f"{out.resolve()}-{time.time_ns()}".encode()).hexdigest()[:8]
    names = [f"mmrm-scorer-{run_id}-{i}" for i in range(config.workers)]
    delay = float(os.environ.get(BATCH_DELAY_ENV) or 0)
    actors = [actor_class.options(name=name).remote(config.model, config.dtype,
                                                    config.threads_per_worker, name=name,
                                                    batch_delay=delay,
                                                    length_buckets=config.length_buckets,
                                                    trust_remote_code=config.trust_remote_code)
              for name in names]
    try:
        ray.get([a.ready.remote() for a in actors])
        reward_config = asdict(read_reward_config(config.model))
        processor = load_processor(config.model, config.trust_remote_code)
        set_right_padding(processor)
        if where == "driver":
            model_type = json.loads((Path(config.model) / "config.json").read_text()
                                    ).get("model_type", "")
            share = can_share_prefix(model_type)
            prepare = lambda batch: encode_groups(processor, batch, share)  # noqa: E731
        else:
            prepare = lambda batch: None  # noqa: E731
        # each actor appears twice: one batch runs while the next waits in its queue, so a
        # worker never idles while the driver prepares, collects and writes
        totals = _drive(config, state, ActorPool(actors * 2), processor.tokenizer, prepare,
                        reward_config, out, errors_path, state_path, progress, show_bar,
                        names)
        totals["preprocess"] = where
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()
    return totals


def start_ray(address: str | None, **init_kwargs) -> None:
    """Join the cluster at ``address``, or start a local one that only this machine can
    reach: every Ray process binds to 127.0.0.1 (Ray treats a node whose IP is loopback as
    local-only), no dashboard, and Ray's token authentication as Ray sets it (on by default
    for local clusters since Ray 2.59; mmrm never turns it off)."""
    import ray

    if address is None:
        from ray._private import ray_constants

        # On Linux Ray advertises (and binds to) the machine's network address unless this
        # is off; then the node IP is 127.0.0.1 and GCS, raylet, workers and agents listen
        # there only. The variable reaches Ray's own subprocesses; the constant this process.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=False, **init_kwargs)


def preprocess_where(config: ScoreConfig) -> str:
    """``driver`` or ``worker``: where ``config.preprocess`` puts the CPU work."""
    if config.preprocess not in ("auto", "driver", "worker"):
        raise ValueError(f"preprocess must be auto, driver or worker, not "
                         f"{config.preprocess!r}")
    if config.preprocess != "auto":
        return config.preprocess
    if config.gpus_per_worker or config.address or os.environ.get("RAY_ADDRESS"):
        return "driver"
    busy = config.workers * config.threads_per_worker
    return "driver" if busy < (os.cpu_count() or 1) else "worker"


def _drive(config, state, pool, tokenizer, prepare, reward_config, out, errors_path,
           state_path, progress, show_bar, actor_names) -> dict:
    """Submit every window's batches (with the model inputs ``prepare`` makes of them),
    then write the windows in order as they complete."""
    bad: list[RecordError] = []   # reader errors not yet written (earlier runs wrote theirs)
    ledger = Ledger(on_error=OnError(config.on_error),
                    on_bad=lambda err: bad.append(err) if err.line >= state.next_line else None)
    items_by_line: dict[int, InferenceRecord] = {}
    windows: list[dict] = []          # {"lines": [...], "end": next line, "pending": n}
    scored: dict[int, dict] = {}
    totals = {"items_scored": 0, "items_failed": 0, "responses": 0, "workers": set()}
    bar = _bar(show_bar, config.input)
    started = time.perf_counter()

    def collect(result: dict) -> None:
        for r in result["results"]:
            scored[r["line"]] = r
            totals["responses"] += len(r.get("scores", []))
        totals["workers"].add(result["worker"])
        owner = next(w for w in windows if result["results"][0]["line"] in w["line_set"])
        owner["pending"] -= 1
        if progress is not None:
            progress({"items": len(result["results"]), "worker": result["worker"],
                      "actor": result["actor"], "actors": actor_names})
        if bar is not None:
            bar.update(len(result["results"]))
            bar.set_postfix(responses_per_s=round(totals["responses"]
                                                  / (time.perf_counter() - started), 1))

    def flush_ready() -> None:
        while windows and windows[0]["pending"] == 0:
            _write_window(windows.pop(0), scored, items_by_line, bad, ledger, state, config,
                          reward_config, out, errors_path, state_path, totals)

    for items, end in _windows(config, state.next_line, ledger, bad):
        for it in items:
            items_by_line[it.line] = it
        window = {"lines": [it.line for it in items], "line_set": {it.line for it in items},
                  "end": end, "pending": 0}
        windows.append(window)
        # sorted by length a few batches at a time, so the workers start before the driver
        # has tokenized the whole window
        for batch in (b for group in _sort_groups(items, config.batch_responses)
                      for b in _batches(group, tokenizer, config.batch_responses)):
            window["pending"] += 1
            encoded = prepare(batch)
            while not pool.has_free():
                collect(pool.get_next_unordered())
                flush_ready()
            pool.submit(lambda actor, job: actor.score.remote(*job), (batch, encoded))
        flush_ready()
    while pool.has_next():
        collect(pool.get_next_unordered())
        flush_ready()
    flush_ready()
    state.complete = True
    _write_state(state_path, state)
    if bar is not None:
        bar.close()
    totals["workers"] = sorted(totals["workers"])
    totals["seconds"] = round(time.perf_counter() - started, 3)
    # the reader saw every line of the file; the state counts what every call wrote
    totals["ledger"] = {"read": ledger.read, "written": state.items_written,
                        "skipped": state.items_failed}
    if ledger.read != state.items_written + state.items_failed:
        raise AssertionError(f"{config.input}: read {ledger.read} lines but wrote "
                             f"{state.items_written} + {state.items_failed} errors")
    return totals


def _write_window(window, scored, items_by_line, bad, ledger, state, config, reward_config,
                  out, errors_path, state_path, totals) -> None:
    """Append one finished window to OUTPUT / errors in line order; then move the state."""
    end = window["end"]
    lines, error_lines = [], []
    for line in window["lines"]:
        item, result = items_by_line.pop(line), scored.pop(line)
        if "error" in result:
            err = RecordError(config.input, line, "<item>", result["error"], "scoring_failed")
            if OnError(config.on_error) is OnError.RAISE:
                raise err
            ledger.skip(err.reason, str(err))
            error_lines.append((line, {"line": line, "id": item.id, "error": str(err),
                                       "reason": err.reason}))
            continue
        scores = result["scores"]
        if config.normalize:
            scores = [(s - reward_config["reward_mean"]) / reward_config["reward_std"]
                      for s in scores]
        record = item.to_json()
        record["id"] = item.id if item.id is not None else f"line-{line}"
        record.update(scores=scores, best=max(range(len(scores)), key=scores.__getitem__))
        lines.append(json.dumps(record))
        ledger.written += 1
    # reader errors up to the window's end belong to this chunk
    while bad and (end is None or bad[0].line < end):
        err = bad.pop(0)
        error_lines.append((err.line, {"line": err.line, "id": None, "error": str(err),
                                       "reason": err.reason}))
    error_lines.sort(key=lambda pair: pair[0])
    state.output_bytes += _append(out, lines)
    state.errors_bytes += _append(errors_path, [json.dumps(e) for _, e in error_lines])
    state.items_written += len(lines)
    state.items_failed += len(error_lines)
    state.next_line = end if end is not None else state.next_line
    totals["items_scored"] += len(lines)
    totals["items_failed"] += len(error_lines)
    _write_state(state_path, state)


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

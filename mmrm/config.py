"""Typed configurations, loaded from YAML and validated once; a leaf (it imports nothing of
mmrm), so every other module can use its types.

A bad key or value is reported with the file and the dotted key::

    configs/tiny_none.yaml: optim.lr: Input should be greater than 0

Overrides use the same dotted keys everywhere (CLI, DVC stages, Prefect flows):
``optim.lr=3e-4 seed=2`` (:func:`apply_overrides`, :func:`with_overrides`).

Shipped configs (``mmrm/configs/``) are package data: ``mmrm train tiny/none`` finds
``mmrm/configs/tiny/none.yaml`` from any folder, installed or not (:func:`config_path`).
"""

from __future__ import annotations

from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class InputMode(str, Enum):
    """What a model sees of a pair (:class:`mmrm.data.PairCollator`)."""

    MULTIMODAL = "multimodal"      # the image and the text (the MM-RM)
    TEXT_ONLY = "text_only"        # the conversation without the image (the shortcut proxy)
    BLANK_IMAGE = "blank_image"    # a white tile where the image was (the reference proxy)


class ProxySource(str, Enum):
    """Where the text-only proxy's per-pair rewards come from (:mod:`mmrm.weighting`)."""

    NONE = "none"                  # no proxy (a standard RM)
    JOINT = "joint"                # the paper: a proxy trained in the same steps as the RM
    CROSS_FIT = "cross_fit"        # proxies trained first on the other folds, frozen; their
                                   # margins cached (mmrm train-proxy)


class Weighting(str, Enum):
    """How the proxy's rewards change the reward model's per-pair loss (:mod:`mmrm.weighting`)."""

    NONE = "none"                  # every pair weighs 1: the standard Bradley-Terry RM
    SFC = "sfc"                    # the paper's Shortcut-Failure Coefficient, per step
    GROUP_BALANCE = "group_balance"  # JTT-style fixed weights: proxy-wrong / -right pairs half each
    POE = "poe"                    # product of experts: -log sigmoid(margin + proxy margin)
    CONF_REG = "conf_reg"          # confidence regularization: the standard RM's own
                                   # confidence as the target, flattened where the proxy is sure


#: Settings of earlier releases, and what replaced them (the one line an old config gets).
LEGACY_SHORTCUT = {
    "sfc_joint": "shortcut.proxy: joint with shortcut.weighting: sfc",
    "sfc_two_stage": "shortcut.proxy: cross_fit with shortcut.weighting: sfc",
}


class Finetune(str, Enum):
    FULL = "full"                    # every weight trains
    FREEZE_VISION = "freeze_vision"  # the vision tower stays as pre-trained
    LORA = "lora"                    # LoRA on the language model (peft), vision tower frozen


class Strict(BaseModel):
    """The one base of mmrm's configs: unknown keys are errors, and so are infinite and NaN
    numbers (``optim.lr: .inf`` would train to NaN)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class OptimConfig(Strict):
    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.05, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Linear warm-up share of steps.")
    scheduler: str = Field("cosine", pattern="^(cosine|constant)$")
    max_grad_norm: float = Field(1.0, gt=0)
    fused: bool = Field(True, description="torch's fused AdamW kernel (all parameters in one "
                        "kernel; the default of transformers' Trainer from torch 2.8 on). "
                        "Off: torch's per-parameter implementation.")


class LoraConfig(Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj"])


class DataConfig(Strict):
    train: list[str] = Field(description="Pairwise JSONL files to train on.")
    eval: dict[str, str] = Field(default_factory=dict,
                                 description="Named pairwise JSONL files evaluated at the end.")
    image_root: str | None = Field(None, description="Root of img_path (default: each file's "
                                                     "folder).")
    max_length: int = Field(2048, gt=0, description="Longest sequence allowed (tokens).")
    folds: int = Field(1, ge=1, description="Cut the training pairs into this many folds by "
                       "a stable hash of their id (cross-fitting; mmrm.data.fold_of).")
    holdout_fold: int | None = Field(None, ge=0, description="Train on every fold but this "
                                     "one (its pairs are the ones this model never sees).")

    @model_validator(mode="after")
    def _fold_exists(self) -> DataConfig:
        if self.holdout_fold is not None and self.holdout_fold >= self.folds:
            raise ValueError(f"holdout_fold {self.holdout_fold} needs folds > "
                             f"{self.holdout_fold}, not {self.folds}")
        return self


class ShortcutConfig(Strict):
    """What makes a run shortcut-aware: where the text-only proxy's rewards come from
    (``proxy``) and how they change each pair's loss (``weighting``)."""

    proxy: ProxySource = Field(ProxySource.NONE, description="none | joint (trained in the "
                               "same steps, the paper) | cross_fit (trained first on the other "
                               "folds and frozen: mmrm train-proxy, cached in proxy_losses).")
    weighting: Weighting = Field(Weighting.NONE, description="none | sfc (the paper) | "
                                 "group_balance (fixed JTT-style weights) | poe (product of "
                                 "experts) | conf_reg (confidence regularization: a teacher's "
                                 "confidence, flattened where the proxy is sure). All but none "
                                 "need a proxy; group_balance, poe and conf_reg a fixed one "
                                 "(cross_fit); conf_reg also a teacher.")
    eps: float = Field(0.0, ge=0, description="SFC's epsilon (eps/2 + Lt/(eps+Lt+L)).")
    normalize: bool = Field(False, description="Rescale weights to mean 1 per batch.")
    proxy_losses: str | None = Field(None, description="cross_fit: the proxies' cached "
                                     "per-pair losses and margins (JSON); with proxy none: "
                                     "logged statistics only.")
    proxy_mode: InputMode = Field(InputMode.TEXT_ONLY, description="Input of the proxy: "
                                  "text_only, or blank_image (the reference code's white "
                                  "tile through the frozen vision tower).")
    proxy_folds: int = Field(2, ge=1, description="cross_fit: each pair's proxy reward "
                             "comes from a proxy trained on the other folds, so it is out of "
                             "sample, as the paper's online loss is; 1: one proxy on all "
                             "pairs, scored on its own training pairs.")
    teacher: str | None = Field(None, description="conf_reg: a saved reward model whose "
                                "margins on the training pairs are the target (the standard "
                                "RM of the same data; the pipeline sets the `none` variant of "
                                "the same environment).")
    teacher_margins: str | None = Field(None, description="conf_reg: where the teacher's "
                                        "margins are cached (JSON; made on first use, remade "
                                        "when the teacher or the pairs change).")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw):
        if isinstance(raw, dict):
            if "formula" in raw:
                raise ValueError("shortcut.formula is gone: how the proxy's rewards become "
                                 "weights is shortcut.weighting (none | sfc | group_balance "
                                 "| poe), where they come from shortcut.proxy (none | joint "
                                 "| cross_fit)")
            old = LEGACY_SHORTCUT.get(str(raw.get("weighting")))
            if old:
                raise ValueError(f"shortcut.weighting: {raw['weighting']} is now {old}")
        return raw

    @model_validator(mode="after")
    def _needs(self) -> ShortcutConfig:
        if self.weighting is not Weighting.NONE and self.proxy is ProxySource.NONE:
            raise ValueError(f"weighting {self.weighting.value} needs a text-only proxy: "
                             f"shortcut.proxy joint or cross_fit")
        if self.proxy is ProxySource.JOINT and self.weighting not in (Weighting.SFC,
                                                                      Weighting.NONE):
            raise ValueError(f"weighting {self.weighting.value} needs a fixed proxy "
                             f"(shortcut.proxy: cross_fit); joint serves sfc")
        if self.proxy is ProxySource.CROSS_FIT and not self.proxy_losses:
            raise ValueError("shortcut.proxy_losses is required with proxy cross_fit")
        if self.weighting is Weighting.CONF_REG and not (self.teacher and self.teacher_margins):
            raise ValueError("weighting conf_reg needs shortcut.teacher (a saved standard RM "
                             "of the same data) and shortcut.teacher_margins (its cache)")
        return self

    @property
    def aware(self) -> bool:
        """Whether the proxy changes the loss (a shortcut-aware run)."""
        return self.weighting is not Weighting.NONE


class TrainConfig(Strict):
    """One reward-model training run."""

    model: str = Field(description="Local directory of the base VLM.")
    output_dir: str = Field(description="Where checkpoints and the final model go.")
    data: DataConfig
    mode: InputMode = Field(InputMode.MULTIMODAL, description="Input of the trained model.")
    shortcut: ShortcutConfig = Field(default_factory=ShortcutConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    finetune: Finetune = Finetune.FULL
    lora: LoraConfig = Field(default_factory=LoraConfig)
    seed: int = 0
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer "
                                                          "steps (overrides epochs).")
    per_device_batch_size: int = Field(8, gt=0, description="Pairs per device per micro-step.")
    gradient_accumulation_steps: int = Field(1, gt=0)
    mixed_precision: str = Field("no", pattern="^(no|bf16|fp16)$",
                                 description="Compute dtype. The weights stay fp32 (autocast), "
                                 "except under DeepSpeed, which loads them in this dtype and "
                                 "keeps fp32 master copies itself.")
    gradient_checkpointing: bool = False
    torch_compile: bool = Field(False, description="Compile the language model and vision "
                                "tower (torch.compile, dynamic shapes; "
                                "mmrm.finetune.compile_backbone). The first steps and the "
                                "first test batches wait for the compiler (40-110 s for the "
                                "tiny base on 2 CPU cores); pays off in long runs, or in many "
                                "runs in one process, which reuse the compiled code.")
    share_prompt: bool = Field(True, description="Run each pair's prompt (image + question) "
                               "through the model once and continue it with chosen and "
                               "rejected from its key/value cache. Whole sequences are used "
                               "instead with gradient checkpointing (which turns the cache "
                               "off), for Qwen2-VL / Qwen2.5-VL (3-D positions) and in "
                               "text_only mode (a question alone is too short to pay for a "
                               "second forward call).")
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    log_steps: int = Field(10, gt=0)
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps.")
    save_total_limit: int = Field(2, gt=0)
    eval_batch_size: int = Field(32, gt=0)
    calibration_pairs: int = Field(1000, ge=0, description="Training pairs scored after "
                                   "training for the saved reward mean/std (normalised "
                                   "scores); 0 skips it (mean 0, std 1).")
    dataloader_num_workers: int = Field(0, ge=0, description="Processes that build batches "
                                                             "(images, chat template) while "
                                                             "the model trains.")
    encode_cache_mib: float = Field(512, ge=0, description="Encoded pairs kept in memory per "
                                    "input view (and loader worker) after their first batch, "
                                    "so that later epochs skip the chat template, tokenizer "
                                    "and image preprocessing (mmrm.data.EncodingCache); 0 "
                                    "turns it off. Unused where a run reads its pairs once.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.shortcut.proxy is not ProxySource.NONE and self.mode is not InputMode.MULTIMODAL:
            raise ValueError("a text-only proxy serves a multimodal model (mode: multimodal)")
        return self


class ScoreConfig(Strict):
    """One batch-scoring run (``mmrm score``)."""

    model: str = Field(description="Saved reward model directory.")
    input: str = Field(description="Inference JSONL.")
    output: str = Field(description="JSONL to write (OUTPUT.state.json beside it while it "
                        "is in progress).")
    errors: str | None = Field(None, description="Bad items file (default: OUTPUT's stem + "
                               ".errors.jsonl).")
    workers: int = Field(1, ge=1, description="Scorer actors.")
    gpus_per_worker: float = Field(0.0, ge=0, description="1 = a GPU each, 0.5 = two per "
                                   "GPU, 0 = CPU.")
    threads_per_worker: int = Field(1, ge=1, description="torch threads of a CPU worker.")
    batch_responses: int = Field(64, ge=1, description="Responses per forward (items are "
                                 "packed up to this many).")
    length_buckets: int = Field(4, ge=1, description="A batch's responses run in up to this "
                                "many groups of similar length after the shared prompts.")
    chunk_items: int = Field(256, ge=1, description="Items per written chunk (the resume "
                             "granularity).")
    normalize: bool = Field(False, description="Scores as (r - reward_mean) / reward_std from "
                            "the model's config.")
    on_error: Literal["raise", "skip"] = Field("raise", description="Stop at the first bad "
                                               "item, or skip it into the errors file.")
    address: str | None = Field(None, description="Ray cluster to join (default RAY_ADDRESS, "
                                "else a local one on 127.0.0.1).")
    image_root: str | None = Field(None, description="Root of img_path (default: the input "
                                   "file's folder).")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Weights on the "
                                                   "workers.")
    preprocess: Literal["auto", "driver", "worker"] = Field(
        "auto", description="Where images are decoded and text tokenized: driver (while the "
        "workers run the model), worker, or auto (the driver where it has a CPU of its own: "
        "GPU workers, a remote cluster, or fewer worker threads than CPUs).")
    trust_remote_code: bool = Field(False, description="Run model code shipped in the model "
                                    "folder (never on the folder's own say-so).")

    @property
    def errors_path(self) -> Path:
        if self.errors:
            return Path(self.errors)
        out = Path(self.output)
        return out.with_name(out.name.removesuffix(".jsonl") + ".errors.jsonl")


#: The server's default pixel cap (``mmrm serve``): its images come from requests, so it is
#: tighter (25 M, a 5k x 5k image) than mmrm.images.DEFAULT_MAX_PIXELS for the user's files.
SERVE_MAX_PIXELS = 25_000_000


class ServeConfig(Strict):
    """A reward server (``mmrm serve``): the model, where it listens, and its limits."""

    model: str = Field(description="Saved reward model folder (a registry URI is resolved "
                       "to one first).")
    host: str = Field("127.0.0.1", description="Where the HTTP server listens; a "
                      "non-loopback host needs token_file.")
    port: int = Field(8000, ge=1, le=65535)
    token_file: str | None = Field(None, description="A file holding the bearer token every "
                                   "request but /health must carry.")
    replicas: int = Field(1, ge=1, description="Model replicas (Ray actors).")
    address: str | None = Field(None, description="Ray cluster to join (default: a local "
                                "one on 127.0.0.1).")
    image_root: str | None = Field(None, description="Root of img_path in /score items "
                                   "(default: images only as base64).")
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    normalize: bool = Field(False, description="Rewards as (r - mean) / std of the model's "
                            "training rewards.")
    threads: int = Field(1, ge=1, description="torch threads per CPU replica.")
    gpus_per_replica: float = Field(0.0, ge=0)
    max_body_bytes: int = Field(8 << 20, ge=1024, description="Largest request body.")
    max_header_bytes: int = Field(64 << 10, ge=1024, description="Largest request head "
                                  "(request line and headers).")
    max_items: int = Field(256, ge=1, description="Items (or queries) per request.")
    max_responses: int = Field(64, ge=1, description="Responses per item.")
    max_tokens: int | None = Field(None, ge=1, description="Text tokens of a prompt and its "
                                   "longest response: a longer item is refused, as training "
                                   "refuses it (default: the model's training max_length, "
                                   "else 4096).")
    max_image_pixels: int = Field(SERVE_MAX_PIXELS, ge=1, description="Decompression-bomb cap "
                                  "(width x height) per image.")
    max_request_pixels: int = Field(64_000_000, ge=1, description="Pixels of all of a "
                                    "request's images together (read from their headers "
                                    "before any is decoded).")
    max_aspect_ratio: float = Field(100.0, ge=1, description="Longest side over shortest "
                                    "side of an image.")
    request_timeout_s: float = Field(60.0, gt=0, description="Seconds from a request's body "
                                     "to its answer; past them the work is cancelled (504).")
    header_timeout_s: float = Field(10.0, gt=0, description="Seconds a connection may take "
                                    "to send a request's headers (408, closed).")
    body_timeout_s: float = Field(30.0, gt=0, description="Seconds a request may take to "
                                  "send its body after its headers (408).")
    batch_requests: int = Field(32, ge=1, description="Concurrent requests one replica "
                                "scores together.")
    batch_wait_s: float = Field(0.01, ge=0, description="How long a replica waits for more "
                                "requests to batch with the first.")
    batch_responses: int = Field(128, ge=1, description="Responses per forward pass.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica accepts at "
                                      "once (more wait in Serve's queue).")
    max_concurrent_requests: int = Field(256, ge=1, description="Requests being scored at "
                                         "once over all replicas; more are answered 503 with "
                                         "Retry-After.")
    policy_template: str | None = Field(None, description="The chat template the RL "
                                        "policy renders queries in: a known family "
                                        "(qwen2_vl, internvl, llava, llava_mistral, idefics3) "
                                        "or a tokenizer folder (default: the reward model's "
                                        "own, then every known family).")
    images_from: str | None = Field(None, description="The RL prompts' JSONL (prompt, "
                                    "img_path): the image of a query sent without one, "
                                    "looked up by its prompt.")
    text_only: bool = Field(False, description="Score a query sent without an image (and "
                                "not in images_from) against a blank image instead of "
                                "refusing it: a multimodal reward without its image.")


C = TypeVar("C", bound=BaseModel)


def flatten(tree: dict, prefix: str = "", keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``: the dotted keys overrides take and
    trackers log (a key in ``keep`` stays a mapping)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in keep:
            flat.update(flatten(value, f"{name}.", keep))
        else:
            flat[name] = value
    return flat


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Set dotted keys from ``key=value`` strings (values parse as YAML: ``1e-4``, ``true``)
    or from a ``{dotted key: value}`` mapping; returns a new dict."""
    items = overrides.items() if isinstance(overrides, dict) else \
        [_split_override(item) for item in overrides]
    raw = _copy(raw)
    for key, value in items:
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return raw


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not key=value")
    key, value = item.split("=", 1)
    return key, yaml.safe_load(value)


def _copy(raw: dict) -> dict:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def validate(cls: type[C], raw: dict, source: str | Path = "<config>") -> C:
    """``cls`` from a mapping; errors name the source and every bad dotted key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping at the top level")
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        lines = [f"{source}: {'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                 + (f" (got {e['input']!r})" if isinstance(e.get("input"), (str, int, float))
                    and e["type"] != "missing" else "")
                 for e in err.errors()]
        raise ValueError("\n".join(lines)) from None


def with_overrides(config: C, overrides: list[str] | dict[str, Any],
                   source: str = "<overrides>") -> C:
    """A copy of a validated config with dotted keys changed, validated again."""
    return validate(type(config), apply_overrides(config.model_dump(mode="json"), overrides),
                    source)


def config_path(name: str | Path) -> Path:
    """A config file: ``name`` itself if it exists, else a shipped one (``tiny/none`` or
    ``tiny/none.yaml`` -> ``mmrm/configs/tiny/none.yaml`` in the installed package)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = resources.files("mmrm").joinpath("configs", *Path(name).with_suffix(
        ".yaml").parts)
    if shipped.is_file():
        return Path(str(shipped))
    raise ValueError(f"{name}: no such config file, nor a shipped one (shipped: "
                     f"{', '.join(shipped_configs())})")


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package (``tiny/none``, ...)."""
    root = resources.files("mmrm").joinpath("configs")
    return sorted(f"{group.name}/{Path(f.name).stem}" for group in root.iterdir()
                  if group.is_dir() for f in group.iterdir() if f.name.endswith(".yaml"))


class ConfigYAMLError(yaml.MarkedYAMLError):
    """Valid YAML that is not a valid config: a key given twice, an alias."""


class StrictLoader(yaml.SafeLoader):
    """YAML as mmrm's configs are written: a key given twice in one mapping is an error (a
    second ``optim:`` block would silently replace the first), and so are anchors and
    aliases (a few hundred bytes of nested aliases expand to gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigYAMLError("while reading a config", None, "aliases (*name) are not "
                                  "supported in mmrm configs", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigYAMLError(
                    "while reading a config", None, f"key {key!r} given twice (first on line "
                    f"{seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A YAML file through :class:`StrictLoader`; a problem is ``file:line: problem``."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot be read: {err}") from None
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        kind = "not a valid config" if isinstance(err, ConfigYAMLError) else "not valid YAML"
        raise ValueError(f"{where}: {kind}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None


def read_config(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping, with ``extends: NAME`` resolved: the YAML file ``NAME`` in
    the same folder (itself perhaps extending another) is read first and this file's keys
    are set over it, section by section. So a preset is its difference from one base
    (``tiny/sfc_two_stage.yaml`` is ``extends: base`` and its ``shortcut:``)."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    parent = path.parent / f"{base}.yaml"
    if not isinstance(base, str) or not parent.is_file():
        raise ValueError(f"{path}: extends: {base!r}: no such config beside it ({parent})")
    if parent.resolve() in seen:
        raise ValueError(f"{path}: extends: {base!r}: a config cannot extend itself")
    return _merged(read_config(parent, (*seen, path.resolve())), raw)


def _merged(base: dict, over: dict) -> dict:
    out = _copy(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) and key != "eval" else value
    return out


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
                cls: type[C] = TrainConfig) -> C:
    """Load and validate a YAML config (a path or a shipped name, ``extends`` resolved);
    errors name the file and the dotted key (a key given twice, or an alias, names the
    line)."""
    path = config_path(path)
    return validate(cls, apply_overrides(read_config(path), overrides or []), path)


def variant_shortcut(variant: str, proxy_losses: str | Path | None = None) -> dict:
    """The ``shortcut`` section of a shipped variant (``tiny/<variant>``: none, sfc_joint,
    sfc_two_stage, group_balance, poe) for a config of one's own, its proxies' cache at
    ``proxy_losses`` where the variant reads one (``cross_fit``)."""
    shortcut = load_config(f"tiny/{variant}").shortcut.model_dump(mode="json")
    cached = shortcut["proxy"] == ProxySource.CROSS_FIT.value
    return {**shortcut, "proxy_losses": str(proxy_losses) if cached else None}

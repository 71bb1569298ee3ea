"""The reward model: a Hugging Face VLM backbone and a scalar value head, by composition.

The value head reads the backbone's last hidden state at the last real token of each
sequence (sequences are right-padded). With images, each image is encoded once and its
features are reused for every sequence that shows it (a pair's chosen and rejected, an
item's N responses), through transformers' ``mm_encoder_outputs``.

A saved reward model is a directory that loads without mmrm::

    config.json, model.safetensors, tokenizer/processor files   # the backbone, HF format
    value_head.safetensors                                      # {"weight": (1, H), "bias": (1,)}
    reward_config.json                                          # base model, template, mean/std
    mmrm_files.json                                             # every file's size and sha256

``reward_config.json`` carries ``reward_mean``/``reward_std`` over the training set (for
normalised scores) and the input ``mode`` the model was trained with. A folder is written
whole (staged beside its place and renamed into it), ``mmrm_files.json`` last; loading
refuses a folder whose files are not the set that was saved (a value head of another run,
a torn shard), and any non-finite statistic or weight.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmrm.data import set_right_padding

REWARD_CONFIG = "reward_config.json"
VALUE_HEAD = "value_head.safetensors"
#: Every file of a saved folder, its size and sha256: written last, checked at load.
FILES_RECORD = "mmrm_files.json"

#: Image inputs that the backbone's forward also needs (to place positions), beside the features.
_POSITION_KEYS = ("image_grid_thw", "image_sizes")


@dataclass
class RewardConfig:
    """What a saved reward model says about itself (``reward_config.json``)."""

    base_model: str
    mode: str = "multimodal"
    reward_mean: float = 0.0
    reward_std: float = 1.0
    template: str = "processor chat template: user [image, prompt], assistant [response]"
    trust_remote_code: bool = False
    extra: dict = field(default_factory=dict)


#: Backbones whose positions are not a plain 1-D count (Qwen2-VL's 3-D M-RoPE is computed from
#: the whole sequence): a prompt's key/value cache cannot simply be continued.
NO_PREFIX_SHARING = ("qwen2_vl", "qwen2_5_vl")


#: Weight dtypes by the names that configs and the CLI use. A checkpoint loads in the one
#: asked for: without a dtype, transformers 5 keeps the dtype it was saved in (bf16 for most
#: released VLMs).
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weight_dtype_named(name: str) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16`` as a torch dtype; any other name raises."""
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(WEIGHT_DTYPES)}, not {name!r}")
    return WEIGHT_DTYPES[name]


def can_share_prefix(model_type: str) -> bool:
    """Whether a backbone of this ``model_type`` can continue a prompt's key/value cache."""
    return model_type not in NO_PREFIX_SHARING


def hidden_size_of(config) -> int:
    text = getattr(config, "text_config", None) or config
    return text.hidden_size


class RewardModel(nn.Module):
    """Backbone + value head. ``forward`` returns one reward per sequence.

    Args:
        backbone: a ``*ForConditionalGeneration`` (or ``AutoModelForImageTextToText``) model.
        config: the reward config saved beside the weights.
    """

    def __init__(self, backbone: nn.Module, config: RewardConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.value_head = nn.Linear(hidden_size_of(backbone.config), 1)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size_of(backbone.config) + 1))
        nn.init.zeros_(self.value_head.bias)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(cls, path: str | Path, *, mode: str = "multimodal", dtype=None,
                  trust_remote_code: bool = False, attn_implementation: str | None = None
                  ) -> RewardModel:
        """A new reward model over the VLM at ``path`` (a local directory)."""
        backbone = _load_backbone(path, dtype, trust_remote_code, attn_implementation)
        return cls(backbone, RewardConfig(base_model=str(path), mode=mode,
                                          trust_remote_code=trust_remote_code))

    @classmethod
    def load(cls, path: str | Path, *, dtype=None, attn_implementation: str | None = None,
             trust_remote_code: bool = False) -> RewardModel:
        """Load a reward model saved by :meth:`save` (checked first: :func:`check_reward_model`).

        Args:
            trust_remote_code: run model code shipped in the folder. Only the caller decides:
                a folder whose ``reward_config.json`` asks for it is refused without it.
        """
        path = Path(path)
        config = check_reward_model(path, trust_remote_code)
        try:
            backbone = _load_backbone(path, dtype, trust_remote_code, attn_implementation)
        except Exception as err:      # noqa: BLE001 - safetensors and transformers raise
            raise ValueError(f"{path}: the backbone does not load ({type(err).__name__}: "
                             f"{str(err)[:300]})") from None
        model = cls(backbone, config)
        head = load_file(str(path / VALUE_HEAD))
        model.value_head.load_state_dict(head)
        model.value_head.to(next(backbone.parameters()).dtype)
        bad = next((name for name, p in model.named_parameters()
                    if p.is_floating_point() and not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise ValueError(f"{path}: weight {bad} holds NaN or infinite values: refused "
                             f"(it would score every answer NaN)")
        return model

    def save(self, path: str | Path, processor=None, extra: dict[str, str] | None = None
             ) -> None:
        """Write the backbone (HF format), the value head, ``reward_config.json``, the
        ``extra`` files (name -> text) and, last, :data:`FILES_RECORD`: all in a staging
        folder that then takes ``path``'s place whole (:func:`mmrm.outputs.staged_folder`),
        so a signal or a full disk never leaves a mix of two saves."""
        from mmrm.outputs import staged_folder

        with staged_folder(path) as staging:
            self.backbone.save_pretrained(staging)
            if processor is not None:
                processor.save_pretrained(staging)
            save_file({k: v.detach().contiguous().cpu()
                       for k, v in self.value_head.state_dict().items()},
                      str(staging / VALUE_HEAD))
            (staging / REWARD_CONFIG).write_text(json.dumps(asdict(self.config), indent=2)
                                                 + "\n")
            for name, text in (extra or {}).items():
                (staging / name).write_text(text)
            write_files_record(staging)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                sequences_per_image: int = 1, mm_token_type_ids: torch.Tensor | None = None,
                prefix_input_ids: torch.Tensor | None = None,
                prefix_attention_mask: torch.Tensor | None = None, length_buckets: int = 1,
                **image_inputs) -> torch.Tensor:
        """Rewards of shape ``(N,)`` for ``N`` right-padded sequences.

        Args:
            input_ids, attention_mask: ``(N, L)``.
            sequences_per_image: each of the ``M`` images is shown by this many sequences,
                ordered ``[all sequences of copy 0, all of copy 1, ...]``: with a pair batch,
                ``N = 2M`` as ``[chosen..., rejected...]``.
            mm_token_type_ids: ``(N, L)``, which tokens are image tokens (Qwen2-VL's 3-D
                rotary positions need it; other backbones ignore it).
            prefix_input_ids, prefix_attention_mask: ``(M, P)``, left-padded: the prompt
                (image + question) that the ``sequences_per_image`` sequences of each image
                share. Given them, ``input_ids`` holds only the continuations and the prompt
                runs through the model once (:meth:`forward_shared_prefix`).
            length_buckets: with a shared prefix, run the continuations in up to this many
                groups of similar length (:meth:`forward_shared_prefix`).
            image_inputs: the processor's image tensors for the ``M`` images
                (``pixel_values``, ``image_grid_thw``, ...); none for text-only.
        """
        if prefix_input_ids is not None:
            return self.forward_shared_prefix(prefix_input_ids, prefix_attention_mask,
                                              input_ids, attention_mask, sequences_per_image,
                                              length_buckets, **image_inputs)
        inner = self.backbone.model
        kwargs = {}
        if mm_token_type_ids is not None:
            kwargs["mm_token_type_ids"] = mm_token_type_ids
        image_inputs = {k: v for k, v in image_inputs.items() if v is not None}
        if image_inputs:
            features = self.encode_images(**image_inputs)
            pooled = features.pooler_output   # per image (a list) or stacked (a tensor)
            features.pooler_output = (
                pooled.repeat(sequences_per_image, *([1] * (pooled.dim() - 1)))
                if torch.is_tensor(pooled) else list(pooled) * sequences_per_image)
            kwargs["mm_encoder_outputs"] = {"image": features}
            for key in _POSITION_KEYS:
                if key in image_inputs:
                    kwargs[key] = image_inputs[key].repeat(
                        sequences_per_image, *([1] * (image_inputs[key].dim() - 1)))
        out = inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state
        last = last_token_index(attention_mask)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.value_head(pooled.to(self.value_head.weight.dtype)).squeeze(-1)

    def forward_shared_prefix(self, prefix_input_ids: torch.Tensor,
                              prefix_attention_mask: torch.Tensor, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor, sequences_per_image: int,
                              length_buckets: int = 1, **image_inputs) -> torch.Tensor:
        """Rewards of ``N = n·M`` sequences that are ``M`` shared prompts, each continued ``n``
        ways: the prompts run once, and every continuation attends to its prompt's rows of the
        key/value cache.

        Equal (up to float rounding) to :meth:`forward` over the whole sequences, gradients
        included (the cache is part of the graph); for backbones with 1-D positions (not
        Qwen2-VL's 3-D M-RoPE) and without gradient checkpointing (which turns caching off).

        Args:
            prefix_input_ids, prefix_attention_mask: ``(M, P)``, left-padded.
            input_ids, attention_mask: ``(N, S)`` continuations, right-padded, ordered
                ``[continuation 0 of every prompt, continuation 1 of every prompt, ...]``.
            sequences_per_image: ``n``.
            length_buckets: sort the continuations by length and run them in up to this many
                groups of equal count, each cut to its own longest: less padding where
                responses differ in length (best-of-N candidates), one more language-model
                call per group.
            image_inputs: the prompts' image tensors, as the backbone's forward takes them.
        """
        n, m = sequences_per_image, prefix_input_ids.shape[0]
        inner = self.backbone.model
        positions = (prefix_attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        image_inputs = {k: v for k, v in image_inputs.items() if v is not None}
        out = inner(input_ids=prefix_input_ids, attention_mask=prefix_attention_mask,
                    position_ids=positions, use_cache=True, **image_inputs)
        cache = out.cache if "cache" in out else out.past_key_values   # renamed in 5.x
        if cache is None:
            raise ValueError("the backbone returned no key/value cache (gradient checkpointing "
                             "turns it off): use whole sequences")
        rows = torch.arange(n * m, device=input_ids.device)
        lengths = attention_mask.sum(-1)
        groups = (torch.argsort(lengths, stable=True).tensor_split(length_buckets)
                  if length_buckets > 1 else (rows,))
        prefix_lengths = prefix_attention_mask.sum(-1)
        done, rewards = [], []
        for group in (g for g in groups if len(g)):
            prompts = group % m                   # continuation k*m + i continues prompt i
            width = int(lengths[group].max())
            ids, mask = input_ids[group, :width], attention_mask[group, :width]
            steps = torch.arange(width, device=ids.device)
            hidden = inner(input_ids=ids,
                           attention_mask=torch.cat([prefix_attention_mask[prompts], mask], 1),
                           position_ids=prefix_lengths[prompts, None] + steps[None],
                           use_cache=True,
                           **{_cache_argument(type(inner)): _cache_rows(cache, prompts)}
                           ).last_hidden_state
            pooled = hidden[torch.arange(len(group), device=hidden.device),
                            last_token_index(mask)]
            rewards.append(self.value_head(pooled.to(self.value_head.weight.dtype)).squeeze(-1))
            done.append(group)
        rewards = torch.cat(rewards)
        return torch.empty_like(rewards).index_copy(0, torch.cat(done), rewards)

    @property
    def can_share_prefix(self) -> bool:
        """Whether :meth:`forward_shared_prefix` applies: positions are a plain 1-D count."""
        return can_share_prefix(getattr(self.backbone.config, "model_type", ""))

    @property
    def shares_prompt(self) -> bool:
        """Whether pair batches carry each prompt once (:meth:`forward_shared_prefix`) by
        default: where that applies and the prompt holds an image. A text-only prompt (the
        proxy's) is the question alone, a few tokens next to the responses: sharing it saves
        little and costs a second language-model call per batch and a cache per layer."""
        return self.can_share_prefix and self.config.mode != "text_only"

    def encode_images(self, **image_inputs):
        """Run the vision tower (and projector) once over the given images.

        Feature-selection settings the backbone's ``forward`` would fill from its config
        (InternVL's ``vision_feature_layer``, say) are filled the same way here.
        """
        inner = self.backbone.model
        accepted = inspect.signature(inner.get_image_features).parameters
        for key in ("vision_feature_layer", "vision_feature_select_strategy"):
            if key in accepted and key not in image_inputs and hasattr(inner.config, key):
                image_inputs[key] = getattr(inner.config, key)
        return inner.get_image_features(**image_inputs, return_dict=True)

    def language_model_name(self) -> str:
        """The attribute of the backbone's inner model that holds the language model."""
        for name in ("language_model", "text_model"):
            if hasattr(self.backbone.model, name):
                return name
        raise ValueError(f"cannot find the language model of "
                         f"{type(self.backbone.model).__name__}")

    def vision_tower(self) -> nn.Module:
        inner = self.backbone.model
        for name in ("vision_tower", "visual", "vision_model", "vision_embed_tokens"):
            if hasattr(inner, name):
                return getattr(inner, name)
        raise ValueError(f"cannot find the vision tower of {type(inner).__name__}")

    def vision_parameters(self) -> list[nn.Parameter]:
        return list(self.vision_tower().parameters())


def _cache_rows(cache, rows: torch.Tensor):
    """A key/value cache made of ``cache``'s batch rows ``rows`` (repeats allowed).

    ``cache`` itself is left as it was (its layers are copied before selecting, and a forward
    replaces a layer's tensors rather than writing into them), so several groups of
    continuations can each start from the same prompts.
    """
    part = copy.copy(cache)
    part.layers = [copy.copy(layer) for layer in cache.layers]
    part.batch_select_indices(rows)
    return part


@functools.cache
def _cache_argument(module_class: type[nn.Module]) -> str:
    """``cache`` (transformers >= 5.x) or ``past_key_values``: the key/value cache argument
    of ``module_class.forward`` (looked up once per class: it runs every forward)."""
    return "cache" if "cache" in inspect.signature(module_class.forward).parameters \
        else "past_key_values"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row (right or left padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(-1)


#: Files above this size enter the model digest by name, size and modification time only
#: (hashing an 8B model's 16 GB at every start would cost a minute).
DIGEST_CONTENT_LIMIT = 64 << 20


def model_digest(model_dir: str | Path) -> str:
    """A digest of a model folder's files: content for the small ones (configs, value head,
    tokenizer), name + size + mtime for weight shards over :data:`DIGEST_CONTENT_LIMIT`."""
    from mmrm.images import sha256_file

    h = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(str(path.relative_to(model_dir)).encode() + b"\0")
        if stat.st_size <= DIGEST_CONTENT_LIMIT:
            h.update(sha256_file(path).encode())
        else:
            h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()


def write_files_record(folder: Path) -> None:
    """:data:`FILES_RECORD` of a folder's files (every file's size and sha256)."""
    from mmrm.images import sha256_file

    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != FILES_RECORD}
    (folder / FILES_RECORD).write_text(json.dumps(files, indent=1) + "\n")


def check_files_record(folder: Path) -> None:
    """Refuse a folder whose files are not the set :data:`FILES_RECORD` records: one
    missing, one of another size, a small one (configs, the value head, the tokenizer) whose
    bytes differ, or a file the save did not write. A folder without a record (an older
    save) is not checked."""
    from mmrm.images import sha256_file

    record_file = folder / FILES_RECORD
    if not record_file.is_file():
        return
    try:
        record = json.loads(record_file.read_text())
        expected = {name: (int(v["size"]), str(v["sha256"])) for name, v in record.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{record_file}: unreadable: the folder cannot be checked") from None
    found = {str(p.relative_to(folder)) for p in folder.rglob("*")
             if p.is_file() and p.name != FILES_RECORD}
    for name in sorted(set(expected) | found):
        path = folder / name
        if name not in expected:
            problem = "was not saved with the model"
        elif name not in found:
            problem = "is missing"
        elif path.stat().st_size != expected[name][0]:
            problem = "has another size than the one saved (torn, or from another save)"
        elif path.stat().st_size <= DIGEST_CONTENT_LIMIT and sha256_file(path) != \
                expected[name][1]:
            problem = "is not the file saved with the model (from another save?)"
        else:
            continue
        raise ValueError(f"{path}: {problem}: the folder's files do not belong together "
                         f"({FILES_RECORD}); save the model again")


def check_model_folder(path: str | Path) -> Path:
    """``path`` as a local Hugging Face model folder, or a clear error at once: mmrm never
    asks a model hub (transformers would retry one for minutes with a name it cannot find)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such model folder (mmrm loads models from local folders "
                         f"only; download the model there first)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no config.json, not a Hugging Face model folder")
    pickles = sorted(p.name for p in path.glob("*.bin"))
    if pickles and not any(p.name != VALUE_HEAD for p in path.glob("*.safetensors")):
        raise ValueError(f"{path / pickles[0]}: pickle weights (loading them can run code); "
                         f"mmrm loads safetensors only: save the model with "
                         f"safe_serialization=True (transformers' default)")
    return path


def check_reward_model(path: str | Path, trust_remote_code: bool = False) -> RewardConfig:
    """Check a saved reward model folder before anything heavy starts; its config.

    Raises:
        ValueError: naming the folder, the file and what is wrong with it: no folder, no or
        corrupt ``config.json`` / ``reward_config.json`` (unknown keys, wrong types), a value
        head that is missing, corrupt or of the wrong shape, no weights, or a folder that asks
        for remote code the caller did not allow.
    """
    path = check_model_folder(path)
    config = read_reward_config(path)
    if config.trust_remote_code and not trust_remote_code:
        raise ValueError(f"{path / REWARD_CONFIG}: trust_remote_code: the model needs code "
                         f"shipped in its folder; run it only if you trust the folder, with "
                         f"--trust-remote-code")
    try:
        backbone_config = json.loads((path / "config.json").read_text())
        hidden = (backbone_config.get("text_config") or backbone_config)["hidden_size"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path / 'config.json'}: unreadable or without hidden_size "
                         f"({type(err).__name__}: {err})") from None
    head = path / VALUE_HEAD
    try:
        tensors = load_file(str(head))
    except FileNotFoundError:
        raise ValueError(f"{head}: missing (not a saved reward model?)") from None
    except Exception as err:   # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{head}: not a readable safetensors file ({err})") from None
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if shapes != {"weight": (1, hidden), "bias": (1,)}:
        raise ValueError(f"{head}: expected weight (1, {hidden}) and bias (1,), found {shapes}")
    if not all(bool(torch.isfinite(v).all()) for v in tensors.values()):
        raise ValueError(f"{head}: holds NaN or infinite weights: refused (it would score "
                         f"every answer NaN)")
    if not any(p.name != VALUE_HEAD and p.suffix == ".safetensors" for p in path.iterdir()):
        raise ValueError(f"{path}: no backbone weights (*.safetensors)")
    check_files_record(path)       # last: each file is fine alone, but are they one save?
    return config


def check_model_whole(path: str | Path, trust_remote_code: bool = False) -> RewardConfig:
    """:func:`check_reward_model`, then what loading would find later: every weight file
    readable and every weight finite (read once, a tensor at a time: a truncated shard, a
    NaN), an architecture transformers knows, and a tokenizer. For commands that start
    workers: a broken folder is one line before they start, not a traceback from a worker
    15 seconds later. It reads the weights once (seconds for the tiny base and 2B models,
    about as long as loading them for 8B; the workers then read them from the page
    cache)."""
    config = check_reward_model(path, trust_remote_code)
    path = Path(path)
    from safetensors import safe_open

    for shard in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                for name in handle.keys():
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        raise ValueError(f"{shard}: weight {name} holds NaN or infinite "
                                         f"values: refused (it would score every answer NaN)")
        except ValueError:
            raise
        except Exception as err:      # noqa: BLE001 - safetensors raises its own types
            raise ValueError(f"{shard}: not a readable safetensors file ({err})") from None
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code,
                                   local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"{path / 'config.json'}: not an architecture transformers knows "
                         f"({str(err).splitlines()[0][:200]})") from None
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                    "vocab.json", "tokenizer.model")):
        raise ValueError(f"{path}: no tokenizer (tokenizer.json / tokenizer_config.json): "
                         f"save the processor with the model")
    return config


def read_reward_config(path: str | Path) -> RewardConfig:
    """``reward_config.json`` of a saved reward model, validated (``file: key: problem``)."""
    file = Path(path) / REWARD_CONFIG
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{file}: missing (not a saved reward model?)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a JSON object")
    known = {f.name: f for f in fields(RewardConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{file}: {unknown[0]}: unknown key (known: {', '.join(known)})")
    if "base_model" not in raw:
        raise ValueError(f"{file}: base_model: missing")
    types = {"base_model": str, "mode": str, "reward_mean": (int, float),
             "reward_std": (int, float), "template": str, "trust_remote_code": bool,
             "extra": dict}
    for key, value in raw.items():
        if not isinstance(value, types[key]) or isinstance(value, bool) != (types[key] is bool):
            raise ValueError(f"{file}: {key}: wrong type {type(value).__name__}")
    if raw.get("mode", "multimodal") not in ("multimodal", "text_only", "blank_image"):
        raise ValueError(f"{file}: mode: unknown input mode {raw['mode']!r}")
    import math

    for key in ("reward_mean", "reward_std"):
        if not math.isfinite(raw.get(key, 0.0)):
            raise ValueError(f"{file}: {key}: {raw[key]} is not a finite number (normalised "
                             f"rewards would be NaN or infinite)")
    if raw.get("reward_std", 1.0) <= 0:
        raise ValueError(f"{file}: reward_std: must be > 0")
    return RewardConfig(**raw)


def _load_backbone(path, dtype, trust_remote_code, attn_implementation):
    from transformers import AutoModelForImageTextToText

    path = check_model_folder(path)
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": True,
              "use_safetensors": True}          # never unpickle a .bin beside them
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)


def load_processor(path: str | Path, trust_remote_code: bool = False):
    """The backbone's processor, right-padded; refuses a bare tokenizer (AutoProcessor's
    silent fallback).

    Where the stock processor cannot be built because its video half needs torchvision
    (Qwen2-VL, Qwen2.5-VL, InternVL), the image-only variant from :mod:`mmrm.processors`
    is used instead.
    """
    from transformers import AutoConfig, AutoProcessor

    from mmrm.processors import image_only_processor

    path = check_model_folder(path)
    try:
        processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code,
                                                  local_files_only=True)
    except (AttributeError, ImportError, ValueError, TypeError):
        processor = None     # e.g. a video processor that needs torchvision
    if not hasattr(processor, "image_processor"):
        model_type = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code,
                                                local_files_only=True).model_type
        processor = image_only_processor(path, model_type) or processor
    if processor is None:
        raise ValueError(f"{path}: no processor could be built (see the log above)")
    if not hasattr(processor, "image_processor"):
        raise ValueError(f"{path}: AutoProcessor returned {type(processor).__name__}, not a "
                         f"multimodal processor; is preprocessor_config.json / "
                         f"processor_config.json missing?")
    set_right_padding(processor)      # reward heads read the last real token
    return processor

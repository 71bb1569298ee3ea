"""Loading a saved reward model and scoring with it: the one way in, for evaluation,
training's calibration and proxy losses, serving, and the Ray scorer's actors.

* :func:`load_reward_model` checks the folder (:func:`mmrm.model.check_reward_model`), loads
  the weights in the dtype asked for, the processor right-padded, and the collator of the
  input mode the model was trained in.
* :func:`score_pairs` rewards chosen and rejected of pairs (each pair's prompt once).
* :func:`encode_group` / :func:`score_encoded` reward N responses per item (best-of-N, RL):
  the image is preprocessed and encoded once per item and the prompt runs once, its
  key/value cache shared by the item's responses; :class:`ResponseScorer` holds a model and
  scores batches of items (the Ray driver runs it as an actor).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmrm.config import InputMode
from mmrm.data import PairCollator
from mmrm.model import RewardModel, load_processor, weight_dtype_named


def load_reward_model(model_dir: str | Path, dtype: str = "fp32", device: str | None = None,
                      trust_remote_code: bool = False, max_length: int = 4096
                      ) -> tuple[RewardModel, PairCollator]:
    """A saved reward model (eval mode, on ``device``) and the collator for the input mode it
    was trained in; the processor is ``collator.processor``.

    Raises:
        ValueError: a broken folder (named), an unknown dtype, or remote code not allowed.
    """
    model = RewardModel.load(model_dir, dtype=weight_dtype_named(dtype),
                             trust_remote_code=trust_remote_code)
    model = model.to(device or "cpu").eval()
    processor = load_processor(model_dir, trust_remote_code)
    return model, PairCollator(processor, InputMode(model.config.mode), max_length,
                               share_prompt=model.shares_prompt)


@torch.no_grad()
def score_pairs(model, collator: PairCollator, pairs: list, batch_size: int = 32,
                progress: Callable[[int], None] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected response of each pair (float32, on CPU).

    Args:
        progress: called with the number of pairs done after each batch.
    """
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        batch = collator(pairs[start:start + batch_size])
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v)
                  for k, v in batch.items() if k != "ids"}
        rewards = model(**inputs, sequences_per_image=2).float().cpu()
        c, r = rewards.chunk(2)
        chosen.append(c)
        rejected.append(r)
        if progress is not None:
            progress(len(c))
    model.train(was_training)
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


def reward_statistics(model, collator: PairCollator, pairs: list, batch_size: int = 32
                      ) -> tuple[float, float]:
    """Mean and spread of the rewards of ``pairs``' responses: what normalised scores divide
    by (saved in ``reward_config.json`` as ``reward_mean`` / ``reward_std``)."""
    chosen, rejected = score_pairs(model, collator, pairs, batch_size)
    rewards = torch.cat([chosen, rejected])
    return rewards.mean().item(), max(rewards.std().item(), 1e-6)


class ResponseScorer:
    """Holds one reward model and scores batches of items (a Ray actor, or plain in tests):
    the one place rewards come from for ``mmrm score``, ``mmrm serve`` and the MLflow
    pyfunc, normalised here where asked (``(r - reward_mean) / reward_std`` of the model's
    training rewards), and never non-finite (such an item is an error)."""

    def __init__(self, model_dir: str, dtype: str = "fp32", threads: int = 1,
                 device: str | None = None, name: str = "", batch_delay: float = 0.0,
                 length_buckets: int = 4, trust_remote_code: bool = False,
                 normalize: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, collator = load_reward_model(model_dir, dtype, self.device,
                                                 trust_remote_code)
        self.processor = collator.processor
        self.name, self.batch_delay = name, batch_delay
        self.length_buckets = length_buckets
        self.normalize, self.model_dir = normalize, str(model_dir)
        self.incarnation = f"{os.getpid()}-{time.monotonic_ns()}"

    def score(self, items: list[dict], encoded: list[dict] | None = None,
              normalize: bool | None = None) -> dict:
        """Scores of each item; an item that fails is returned with its error instead.

        Args:
            items: ``{"line", "prompt", "responses", "image_file"}`` each.
            encoded: model inputs the driver already made for some of them
                (:func:`encode_groups`); the other items are encoded here.
            normalize: this call's choice (default: the scorer's).

        Returns ``{"results": [{"line", "scores"} | {"line", "error"}], "worker": the
        incarnation (process) that scored it, "actor": the actor's name, "seconds": the
        time this call took (its encoding and model calls)}``.
        """
        started = time.perf_counter()
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
        results = [self._finished(r, self.normalize if normalize is None else normalize)
                   for r in results]
        return {"results": results, "worker": self.incarnation, "actor": self.name,
                "seconds": time.perf_counter() - started}

    def _finished(self, result: dict, normalize: bool) -> dict:
        """A result's scores normalised where asked; a non-finite one an error."""
        import math

        if "error" in result:
            return result
        scores = result["scores"]
        if not all(map(math.isfinite, scores)):
            return {"line": result["line"], "error": f"the model {self.model_dir} gave a "
                                                     f"non-finite reward ({scores}): a broken "
                                                     f"model, never written"}
        if normalize:
            config = self.model.config
            scores = [(s - config.reward_mean) / config.reward_std for s in scores]
        return {**result, "scores": scores}

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
    images = [it["image"] if it.get("image") is not None else load_image(Path(it["image_file"]))
              for it in items]
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

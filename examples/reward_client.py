"""Calling ``mmrm serve`` from an RL loop: the two endpoints, and a TRL GRPO reward function
that sends the images along (the standard library only; no mmrm needed on the client).

    mmrm serve runs/pipeline/models/povid/none/final --port 8000      # or models:/...@champion
    python examples/reward_client.py --url http://127.0.0.1:8000 --image photo.png

OpenRLHF: point its remote reward model at ``http://HOST:8000/get_reward``
(``--remote_rm_url``); it sends ``{"query": [...]}`` and reads ``rewards``. It sends no
images, so each query is scored with a blank image; to score with the policy's images, use
OpenRLHF's custom reward function hook with :func:`get_reward` below (``images=[...]``).
TRL's ``GRPOTrainer(reward_funcs=[MmrmReward(url)], ...)`` calls :class:`MmrmReward` with the
prompts, the completions and the dataset's ``image`` column.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import urllib.request
from pathlib import Path


def _post(url: str, body: dict, token: str | None = None, timeout: float = 120) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def encode_image(image) -> str:
    """A PIL image, a path or raw bytes as the base64 string the server takes."""
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes):
        data = image
    else:                                   # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    return base64.b64encode(data).decode()


def score(base_url: str, items: list[dict], token: str | None = None) -> list[list[float]]:
    """``POST /score``: items of ``prompt``, ``image`` (PIL / path / bytes) and
    ``responses``; N rewards per item, in order (best-of-N: take the argmax)."""
    body = {"items": [{"prompt": it["prompt"], "image": encode_image(it["image"]),
                       "responses": list(it["responses"])} for it in items]}
    return _post(f"{base_url}/score", body, token)["rewards"]


def get_reward(base_url: str, queries: list[str], images: list | None = None,
               prompts: list[str] | None = None, token: str | None = None) -> list[float]:
    """``POST /get_reward`` in OpenRLHF's shape, with the images mmrm adds (None for none)."""
    body: dict = {"query": queries}
    if prompts is not None:
        body["prompts"] = prompts
    if images is not None:
        body["images"] = [encode_image(i) if i is not None else None for i in images]
    return _post(f"{base_url}/get_reward", body, token)["rewards"]


class MmrmReward:
    """A TRL GRPO reward function: ``reward_funcs=[MmrmReward("http://127.0.0.1:8000")]``.

    TRL calls it with the batch's prompts and completions (strings, or chat messages) and the
    dataset's other columns as keyword arguments; the image column (``image`` or ``images``)
    goes to the server with each completion.
    """

    __name__ = "mmrm_reward"

    def __init__(self, base_url: str, token: str | None = None):
        self.base_url, self.token = base_url.rstrip("/"), token

    def __call__(self, prompts, completions, **columns) -> list[float]:
        images = columns.get("image") or columns.get("images")
        items = []
        for k, (prompt, completion) in enumerate(zip(prompts, completions)):
            image = images[k] if images is not None else None
            if isinstance(image, list):           # a list of images per example: the first
                image = image[0]
            items.append({"prompt": _text(prompt), "image": image,
                          "responses": [_text(completion)]})
        return [r[0] for r in score(self.base_url, items, self.token)]


def _text(message) -> str:
    """A prompt or completion as text (TRL passes strings, or chat messages)."""
    if isinstance(message, str):
        return message
    parts = []
    for turn in message:
        content = turn.get("content", "")
        parts += [content] if isinstance(content, str) else \
            [c.get("text", "") for c in content if c.get("type") == "text"]
    return " ".join(p for p in parts if p)


def main() -> None:
    parser = argparse.ArgumentParser(description="Ask a running mmrm server for rewards.")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--image", required=True)
    parser.add_argument("--token")
    args = parser.parse_args()
    rewards = score(args.url, [{"prompt": "What is in the picture?", "image": args.image,
                                "responses": ["A red circle.", "A blue square."]}], args.token)
    print(json.dumps({"rewards": rewards}))
    print(json.dumps({"get_reward": get_reward(
        args.url, ["<|user|><image>What is in the picture?<|end|><|assistant|>A red circle."
                   "<|end|>"], images=[args.image], token=args.token)}))


if __name__ == "__main__":
    main()

"""The client of ``mmrm serve`` for RL loops: the two endpoints, and a TRL GRPO reward
function that sends each prompt's image once for all its completions. The standard library
only: this one file, copied to a machine without mmrm, is the whole client (``mmrm rl``
uses it as it is).

    mmrm serve runs/pipeline/models/povid/none/final --port 8000      # or models:/...@champion
    python -m mmrm.serve.client --url http://127.0.0.1:8000 --image photo.png

OpenRLHF: point its remote reward model at ``http://HOST:8000/get_reward``
(``--remote_rm_url``); it sends ``{"query": [...], "prompts": [...]}`` in the policy's chat
template and no images: start the server with ``images_from=`` the RL prompts' JSONL (the
image of each prompt) or ``text_only=true``. TRL: ``GRPOTrainer(reward_funcs=[MmrmReward(url)],
...)`` calls :class:`MmrmReward` with the prompts, the completions and the dataset's
``image`` column.

The client follows the server's limits (``/info``): a batch is split into requests under
them, an item of more responses than one request takes is split too, and a 503 (the server
busy, or a replica restarting) is retried with backoff.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path


class Server:
    """One ``mmrm serve``: its limits, read once, and requests retried on 503."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 120,
                 retries: int = 5):
        self.base_url, self.token = base_url.rstrip("/"), token
        self.timeout, self.retries = timeout, retries
        self._limits = None

    def post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.base_url + path, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                answer = err.read()
                if err.code != 503 or attempt == self.retries:
                    raise RuntimeError(f"{path}: {err.code} {answer[:500]!r}") from None
                wait = float(err.headers.get("Retry-After") or 1)
                time.sleep(min(30.0, wait * 2 ** attempt))
        raise AssertionError("unreachable")

    @property
    def limits(self) -> dict:
        if self._limits is None:
            request = urllib.request.Request(self.base_url + "/info", headers={
                "Authorization": f"Bearer {self.token}"} if self.token else {})
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                self._limits = json.loads(response.read())["limits"]
        return self._limits


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


def requests_of(items: list[dict], limits: dict) -> list[list[dict]]:
    """``/score`` items cut to the server's limits: an item of more responses than
    ``max_responses`` into several items (same prompt and image), then requests of at most
    ``max_items`` items, ``max_body_bytes`` (with room to spare) and ``max_request_pixels``
    (each item's ``pixels`` counted, where known)."""
    cut = []
    for k, item in enumerate(items):
        step = limits["max_responses"]
        for start in range(0, len(item["responses"]), step):
            cut.append({**item, "responses": item["responses"][start:start + step],
                        "_from": (k, start)})
    batches, batch, size, pixels = [], [], 0, 0
    for item in cut:
        item_size = len(json.dumps({k: v for k, v in item.items() if k[0] != "_"}))
        item_pixels = item.get("_pixels", 0)
        if batch and (len(batch) == limits["max_items"] or size + item_size >
                      0.9 * limits["max_body_bytes"] or pixels + item_pixels >
                      limits["max_request_pixels"]):
            batches.append(batch)
            batch, size, pixels = [], 0, 0
        batch.append(item)
        size, pixels = size + item_size, pixels + item_pixels
    return batches + ([batch] if batch else [])


def score(base_url: str | Server, items: list[dict], token: str | None = None
          ) -> list[list[float]]:
    """``POST /score``: items of ``prompt``, ``image`` (PIL / path / bytes, or None for a
    text-only row: no image is sent) and ``responses``; N rewards per item, in order
    (best-of-N: take the argmax). Split into as many requests as the server's limits ask."""
    server = base_url if isinstance(base_url, Server) else Server(base_url, token)
    encoded = []
    for item in items:
        row = {"prompt": item["prompt"], "responses": list(item["responses"])}
        if item.get("image") is not None:
            row["image"] = encode_image(item["image"])
            row["_pixels"] = _pixels(item["image"])
        encoded.append(row)
    rewards: list[list[float]] = [[] for _ in items]
    for batch in requests_of(encoded, server.limits):
        body = {"items": [{k: v for k, v in it.items() if k[0] != "_"} for it in batch]}
        for item, got in zip(batch, server.post("/score", body)["rewards"]):
            rewards[item["_from"][0]].extend(got)
    return rewards


def _pixels(image) -> int:
    try:
        from PIL import Image

        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                return im.size[0] * im.size[1]
        if isinstance(image, bytes):
            with Image.open(io.BytesIO(image)) as im:
                return im.size[0] * im.size[1]
        return image.size[0] * image.size[1]
    except Exception:      # noqa: BLE001 - unknown: the server counts it
        return 0


def get_reward(base_url: str, queries: list[str], images: list | None = None,
               prompts: list[str] | None = None, token: str | None = None) -> list[float]:
    """``POST /get_reward`` in OpenRLHF's shape, with the images mmrm adds (None for none)."""
    body: dict = {"query": queries}
    if prompts is not None:
        body["prompts"] = prompts
    if images is not None:
        body["images"] = [encode_image(i) if i is not None else None for i in images]
    return Server(base_url, token).post("/get_reward", body)["rewards"]


class MmrmReward:
    """A TRL GRPO reward function: ``reward_funcs=[MmrmReward("http://127.0.0.1:8000")]``.

    TRL calls it with the batch's prompts and completions (strings, or chat messages; a
    prompt repeated once per completion) and the dataset's other columns as keyword
    arguments. The completions of one prompt and image go to the server as one item, so
    the image and the prompt are encoded once per group, not once per completion; a row
    without an image (a text-only dataset) is sent without one.
    """

    __name__ = "mmrm_reward"

    def __init__(self, base_url: str, token: str | None = None):
        self.server = Server(base_url, token)

    def __call__(self, prompts, completions, **columns) -> list[float]:
        images = columns.get("image", columns.get("images"))
        groups: dict[tuple, dict] = {}
        where = []
        for k, (prompt, completion) in enumerate(zip(prompts, completions)):
            image = images[k] if images is not None else None
            if isinstance(image, list):           # a list of images per example: the first
                image = image[0] if image else None
            text = text_of(prompt)
            key = (text, _image_key(image))
            group = groups.setdefault(key, {"prompt": text, "image": image, "responses": []})
            where.append((key, len(group["responses"])))
            group["responses"].append(text_of(completion))
        keys = list(groups)
        rewards = score(self.server, [groups[k] for k in keys])
        by_key = dict(zip(keys, rewards))
        return [by_key[key][n] for key, n in where]


def _image_key(image):
    """What tells two rows' images apart without encoding them: the path, the bytes, or the
    object (TRL hands a prompt's G copies the same PIL image)."""
    if image is None or isinstance(image, (str, Path, bytes)):
        return image if not isinstance(image, Path) else str(image)
    return id(image)


def text_of(message) -> str:
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
    query = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the "
             "picture?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>")
    print(json.dumps({"get_reward": get_reward(args.url, [query], images=[args.image],
                                               token=args.token)}))


if __name__ == "__main__":
    main()

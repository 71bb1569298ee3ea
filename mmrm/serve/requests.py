"""What a request may be, checked before any work: its JSON, its items, their images (each
under the pixel cap and the aspect-ratio bound, all of them under the request's pixel
budget, checked from the headers before anything is decoded) and their length in tokens
(a longer one is refused, as training refuses it), and where an image comes from when the
client sends none (the server's index from prompt to image, or an explicit text-only
opt-in). Engine-free: the replica calls it, tests call it directly."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path

from mmrm.config import ServeConfig
from mmrm.serve import templates


@dataclass
class RequestError(Exception):
    """A request the server refuses: its HTTP status, what is wrong, where, and why in one
    word (the refusal counter of ``/metrics``)."""

    status: int
    message: str
    index: int | None = None
    field: str | None = None
    reason: str = "bad_request"

    def body(self) -> dict:
        found = {"error": self.message}
        if self.index is not None:
            found["index"] = self.index
        if self.field is not None:
            found["field"] = self.field
        return found


class ImageIndex:
    """``images_from=``: the RL prompts' JSONL (``prompt`` and ``img_path``, under
    ``--image-root`` or the file's folder: mmrm's inference or pairwise format will do),
    looked up by prompt text, for clients that cannot send
    images (OpenRLHF's remote reward model). A prompt given twice with two different images
    is refused at start: the lookup would be a guess."""

    def __init__(self, path: str | Path, max_pixels: int, root: str | Path | None = None):
        from mmrm.formats import ImageCheck, ImageRules, iter_jsonl, text_field
        from mmrm.ledger import FieldProblem, Ledger, RecordError

        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"images_from={self.path}: no such file")
        # img_path under --image-root, else the index file's folder (as every mmrm reader)
        rules = ImageRules(root=Path(root) if root else None, check=ImageCheck.HEADER,
                           max_pixels=max_pixels)
        self.by_prompt: dict[str, tuple[Path, int]] = {}
        for line, obj in iter_jsonl(self.path, Ledger()):
            try:
                prompt = text_field(obj, "prompt").strip()
                image = rules.resolve(text_field(obj, "img_path"), self.path)
            except FieldProblem as problem:
                raise RecordError.at(self.path, line, problem) from None
            known = self.by_prompt.get(prompt)
            if known is not None and known[0] != image:
                raise ValueError(f"{self.path}:{line}: prompt: also on line {known[1]} with "
                                 f"another image: the index would have to guess")
            self.by_prompt.setdefault(prompt, (image, line))

    def find(self, *prompts: str) -> tuple[Path, int] | None:
        for prompt in prompts:
            found = self.by_prompt.get(prompt.strip())
            if found is not None:
                return found
        return None


class RequestParser:
    """A request body to scoring items: ``/score``'s items or ``/get_reward``'s queries, each
    checked against the server's limits; problems are a :class:`RequestError` naming the
    entry and field."""

    def __init__(self, config: ServeConfig, processor, own_shapes: list[templates.Shape],
                 index: ImageIndex | None = None):
        self.config, self.processor, self.index = config, processor, index
        self.root = Path(config.image_root).resolve() if config.image_root else None
        self.tokenizer = getattr(processor, "tokenizer", processor)
        policy = templates.policy_shapes(config.policy_template)
        # the reward model's own template first (a query it rendered itself), then the
        # policy's (the families, or the one named at start)
        self.shapes = [*own_shapes, *policy]
        self.ends = templates.policy_ends(self.shapes)

    # ------------------------------------------------------------------ JSON
    def parse_json(self, raw: bytes) -> dict:
        if len(raw) > self.config.max_body_bytes:
            raise RequestError(413, f"body of {len(raw)} bytes exceeds the limit of "
                                    f"{self.config.max_body_bytes}", reason="body_too_large")
        from mmrm.formats import decode_json
        from mmrm.ledger import FieldProblem

        try:
            body, end = decode_json(raw.decode("utf-8"))
            if raw[end:].strip():
                raise ValueError("extra data after the JSON value")
        except FieldProblem as problem:
            raise RequestError(400, f"body: {problem.problem}", field=problem.field,
                               reason="bad_json") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(400, f"body is not JSON: {err}", reason="bad_json") from None
        if not isinstance(body, dict):
            raise RequestError(400, "body: expected a JSON object", reason="bad_json")
        return body

    # ------------------------------------------------------------------ /score
    def items_of_score(self, body: dict) -> list[dict]:
        """``/score``'s items, each checked (``index``, ``field`` named on a problem)."""
        items = self._list(body, "items")
        budget = PixelBudget(self.config)
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
                                   "responses", "too_many_responses")
            texts = [self.response_text(r, n) for r in responses]
            prompt = self._text(raw, "prompt", n)
            image = self._image_of(raw, prompt, n, budget, path_allowed=True)
            item = {"line": n, "prompt": prompt, "responses": texts, **image}
            self.check_tokens(item, n)
            found.append(item)
        return found

    # ------------------------------------------------------------------ /get_reward
    def items_of_get_reward(self, body: dict) -> list[dict]:
        """``/get_reward``'s queries as one-response items (``images`` aligned, optional)."""
        queries = self._list(body, "query")
        prompts, images = body.get("prompts"), body.get("images")
        for name, value in (("prompts", prompts), ("images", images)):
            if value is not None and (not isinstance(value, list)
                                      or len(value) != len(queries)):
                raise RequestError(400, f"expected a list as long as query ({len(queries)})",
                                   field=name)
        budget = PixelBudget(self.config)
        found = []
        for n, query in enumerate(queries):
            if not isinstance(query, str):
                raise RequestError(400, "expected a string", n, "query")
            given = prompts[n] if prompts is not None else None
            if given is not None and not isinstance(given, str):
                raise RequestError(400, "expected a string", n, "prompts")
            prompt, response = self.split(query, given, n)
            raw = {"image": images[n]} if images is not None and images[n] is not None else {}
            item = {"line": n, "prompt": prompt, "responses": [response],
                    **self._image_of(raw, prompt, n, budget, path_allowed=False,
                                     also=(given or "",))}
            self.check_tokens(item, n)
            found.append(item)
        return found

    def split(self, query: str, prompt: str | None, n: int) -> tuple[str, str]:
        """A full query as (user prompt, response) (:mod:`mmrm.serve.templates`): after
        ``prompt`` where the query starts with it, the policy's end tokens taken off; else
        in the first template that fits. A query that fits none is refused."""
        if prompt is not None:
            if not query.startswith(prompt):
                raise RequestError(400, "the query does not start with prompts[i]", n,
                                   "prompts", "unsplittable")
            return (templates.split_prompt(prompt, self.shapes),
                    templates.strip_ends(query[len(prompt):], self.ends))
        found = templates.split_query(query, self.shapes)
        if found is None:
            known = ", ".join(dict.fromkeys(s.name for s in self.shapes))
            raise RequestError(400, f"cannot split the query into prompt and response: give "
                                    f"prompts[i] (the query's start), or a query in a known "
                                    f"chat template ({known}; policy_template= names "
                                    f"another)", n, "query", "unsplittable")
        return found[0], found[1]

    # ------------------------------------------------------------------ fields
    def _list(self, body: dict, key: str) -> list:
        value = body.get(key)
        if not isinstance(value, list) or not value:
            raise RequestError(400, "expected a non-empty list", field=key)
        if len(value) > self.config.max_items:
            raise RequestError(413, f"{len(value)} entries exceed the limit of "
                                    f"{self.config.max_items} per request", field=key,
                               reason="too_many_items")
        return value

    @staticmethod
    def _text(raw: dict, key: str, n: int) -> str:
        from mmrm.formats import text_field
        from mmrm.ledger import FieldProblem

        try:
            return text_field(raw, key)
        except FieldProblem as problem:
            raise RequestError(400, problem.problem, n, key) from None

    @staticmethod
    def response_text(value, n: int) -> str:
        """A response: any string, the empty one included (a policy's empty completion gets
        the reward model's reward for an empty answer)."""
        if not isinstance(value, str):
            raise RequestError(400, "expected a string", n, "responses")
        if "\x00" in value:
            raise RequestError(400, "contains a NUL character", n, "responses")
        return value

    def check_tokens(self, item: dict, n: int) -> None:
        """Refuse an item whose longest (prompt, response) is over ``max_tokens`` text
        tokens: training refuses such sequences too, and one would hold a replica for
        minutes. Characters are counted first (a token is at least one character of
        text here), so a 600 kB prompt is refused before it is tokenized."""
        limit = self.config.max_tokens
        longest = max(item["responses"], key=len)
        if len(item["prompt"]) + len(longest) > 64 * limit:
            raise RequestError(413, f"{len(item['prompt']) + len(longest)} characters of "
                                    f"prompt and response exceed what {limit} tokens can "
                                    f"hold (max_tokens: refused, not truncated)", n,
                               "prompt", "too_many_tokens")
        count = len(self.tokenizer(item["prompt"] + longest, add_special_tokens=False)
                    ["input_ids"])
        if count > limit:
            raise RequestError(413, f"{count} tokens of prompt and response exceed the limit "
                                    f"of {limit} (max_tokens: refused, not truncated, as "
                                    f"training refuses longer sequences)", n, "prompt",
                               "too_many_tokens")

    def _image_of(self, raw: dict, prompt: str, n: int, budget: PixelBudget,
                  path_allowed: bool, also: tuple[str, ...] = ()) -> dict:
        """An item's image and where it came from (``image_source``): the request's (base64,
        or a path under the image root), else the server's index by prompt, else a blank
        image if the server was started text-only; else the item is refused."""
        if raw.get("image") is not None or raw.get("img_path") is not None:
            if path_allowed and raw.get("image") is not None and \
                    raw.get("img_path") is not None:
                raise RequestError(400, "give exactly one of image (base64) and img_path", n,
                                   "image")
            return {**self.image(raw, n, budget), "image_source": "request"}
        if self.index is not None:
            found = self.index.find(prompt, *also)
            if found is not None:
                path, line = found
                budget.add(path, n, "image")
                return {"image_file": path, "image_source": f"index:{line}"}
        if self.config.text_only:
            from mmrm.data import blank_image

            return {"image": blank_image(), "image_source": "blank"}
        where = f"; the index {self.index.path} has no such prompt" if self.index else ""
        sent = "image (base64) or img_path" if path_allowed else "images[i]"
        raise RequestError(400, f"no image: send {sent}, or start the server with "
                                f"images_from= (the RL prompts' file) or text_only=true{where}",
                           n, "image" if path_allowed else "images", "no_image")

    def image(self, raw: dict, n: int, budget: PixelBudget) -> dict:
        """An item's image, checked like every input: base64 that decodes to an image under
        the caps, or a path inside the server's image root."""
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
                budget.add(data, n, "image")
                inspect_image(data, max_pixels=self.config.max_image_pixels, field="image")
                return {"image": open_rgb(io.BytesIO(data))}
            if self.root is None:
                raise FieldProblem("img_path", "this server takes images as base64 only "
                                               "(it was started without --image-root)",
                                   "no_image_root")
            path = resolve_image_path(str(raw["img_path"]), self.root, root_is_explicit=True)
            budget.add(path, n, "img_path")
            inspect_image(path, max_pixels=self.config.max_image_pixels)
            return {"image_file": path}
        except FieldProblem as problem:
            raise RequestError(400, problem.problem, n, problem.field, "bad_image") from None


class PixelBudget:
    """One request's images, read from their headers before any is decoded: each under the
    aspect-ratio bound and the per-image cap, all of them under the request's budget."""

    def __init__(self, config: ServeConfig):
        self.config, self.used = config, 0

    def add(self, source: bytes | Path, n: int, field: str) -> None:
        import warnings

        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else
                                source) as im:
                    width, height = im.size
        except Image.DecompressionBombError as err:
            raise RequestError(400, f"image exceeds the limit of "
                                    f"{self.config.max_image_pixels} pixels ({err})", n, field,
                               "image_too_large") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise RequestError(400, f"image does not decode: {err}", n, field,
                               "bad_image") from None
        ratio = max(width, height) / max(1, min(width, height))
        if ratio > self.config.max_aspect_ratio:
            raise RequestError(400, f"image of {width}x{height} pixels: aspect ratio "
                                    f"{ratio:.0f} exceeds the bound of "
                                    f"{self.config.max_aspect_ratio:g}", n, field,
                               "aspect_ratio")
        if width * height > self.config.max_image_pixels:
            raise RequestError(400, f"image of {width}x{height} pixels exceeds the limit of "
                                    f"{self.config.max_image_pixels}", n, field,
                               "image_too_large")
        self.used += width * height
        if self.used > self.config.max_request_pixels:
            raise RequestError(413, f"the request's images hold more than "
                                    f"{self.config.max_request_pixels} pixels (reached at "
                                    f"entry {n}): send fewer per request", n, field,
                               "request_pixels")


def encode_answer(body: dict) -> bytes:
    """A response body as strict JSON (a NaN reward is an error, never ``NaN`` on the
    wire)."""
    return json.dumps(body, allow_nan=False).encode()

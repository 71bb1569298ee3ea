"""The hostile requests ``mmrm serve`` must refuse, and what it must not do with them: each is
answered with its 4xx (or the connection is closed) and a message saying why, and a valid
request right after it is answered. Some are what a browser page could send a loopback
server (JSON as text/plain, another Host, other methods), some what an RL loop sends by
mistake (a huge prompt, huge images, no image), some what a slow or vanishing client does
(slow headers, slow body, giving up mid-request, a request past its time), some plain bad
input. Set ``MMRM_HOSTILE_REPORT=path`` to write each case's answer and the seconds to the
next valid answer (what the closing note of the serve issue quotes)."""

import base64
import http.client
import io
import json
import os
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

from mmrm.data import load_pairs
from serving import TOKEN, Server

#: The hostile server's limits: short timeouts, so slow clients are cut off quickly.
LIMITS = ("request_timeout_s=4", "header_timeout_s=2", "body_timeout_s=2")


@pytest.fixture(scope="module")
def hostile(trained_runs, tiny_pairs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    root = Path(load_pairs(tiny_pairs[("povid", "test")])[0].image_file).parent.parent
    running = Server(trained_runs["none"] / "final", tmp, "--image-root", str(root), *LIMITS)
    yield running, root, load_pairs(tiny_pairs[("povid", "test")])
    running.stop()


def b64(image: Image.Image, fmt="PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def send(port: int, method: str, path: str, body: bytes | None = None,
         headers: list[tuple[str, str]] | None = None, timeout: float = 30):
    """One request with exactly these headers (Host, Content-Type and Authorization are
    the caller's); (status, answer text), or (-1, why) if the connection closed first."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers or []:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            for start in range(0, len(body), 1 << 16):
                conn.send(body[start:start + (1 << 16)])
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (ConnectionError, http.client.HTTPException, socket.timeout) as err:
        return -1, f"{type(err).__name__}: {err}"
    finally:
        conn.close()


def normal(token=TOKEN, content_type="application/json", host="127.0.0.1"):
    found = [("Host", host), ("Content-Type", content_type)]
    return found + ([("Authorization", f"Bearer {token}")] if token else [])


def raw_socket(port: int, head: bytes, then: bytes = b"", wait: float = 0.0,
               timeout: float = 30) -> tuple[int, str]:
    """Bytes written to a socket as a slow or broken client would, and the status line the
    server answers (-1 if it closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            if wait:
                time.sleep(wait)
            if then:
                sock.sendall(then)
            chunks = []
            while chunk := sock.recv(65536):       # until the server closes it
                chunks.append(chunk)
            answer = b"".join(chunks).decode(errors="replace")
        except (ConnectionError, socket.timeout) as err:
            return -1, f"{type(err).__name__}"
    if not answer.startswith("HTTP/1.1 "):
        return -1, answer[:80] or "closed"
    return int(answer.split()[1]), answer


def heavy_body(pairs, items=200, responses=64) -> bytes:
    """A request that takes the tiny replica many seconds: 200 items x 64 responses."""
    image = base64.b64encode(Path(pairs[0].image_file).read_bytes()).decode()
    answer = " ".join([pairs[0].chosen] * 6)
    return json.dumps({"items": [{"prompt": pairs[0].prompt, "image": image,
                                  "responses": [answer] * responses}] * items}).encode()


def cases(port: int, pairs, bomb_png: bytes) -> dict:
    """name -> (a function sending the case, the status it must get (or the statuses it
    may), what the answer says). Status -1: the connection closed without an answer (a
    client that went away gets nothing)."""
    small = b64(Image.new("RGB", (8, 8), (200, 0, 0)))
    jpeg = base64.b64decode(b64(Image.new("RGB", (64, 64), (0, 200, 0)), "JPEG"))
    big = b64(Image.new("RGB", (5000, 5000), (10, 10, 10)))
    strip = b64(Image.new("RGB", (100_000, 1), (10, 10, 10)))
    item = {"prompt": "Q?", "image": small, "responses": ["a", "b"]}
    query = "<|user|>What colour is the shape?<|end|><|assistant|>It is red.<|end|>"

    def post(path, body, headers=None, **kw):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return lambda: send(port, "POST", path, data, headers or normal(), **kw)

    def score(**changes):
        return post("/score", {"items": [{**item, **changes}]})

    def gives_up():
        head = (f"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\n").encode()
        body = heavy_body(pairs)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(1.0)                    # the replica is scoring it now
        return -1, "client closed the connection after 1 s"

    return {
        # what a browser page could send a loopback server
        "JSON sent as text/plain": (post("/score", {"items": [item]},
                                         normal(content_type="text/plain")), 415,
                                    "application/json"),
        "another Host (DNS rebinding)": (post("/score", {"items": [item]},
                                              normal(host="evil.example:8000")), 421, "Host"),
        # HTTP/1.1 without a Host, or with two: h11 refuses it before the app sees it
        "no Host": (lambda: send(port, "GET", "/info", None, [
            ("Authorization", f"Bearer {TOKEN}")]), 400, "Invalid HTTP"),
        "two Hosts": (lambda: send(port, "GET", "/info", None, [
            ("Host", "127.0.0.1"), ("Host", "evil.example"),
            ("Authorization", f"Bearer {TOKEN}")]), 400, "Invalid HTTP"),
        "PATCH /info": (lambda: send(port, "PATCH", "/info", b"{}", normal()), 405, "GET"),
        "DELETE /health": (lambda: send(port, "DELETE", "/health", None, normal()), 405,
                           "GET"),
        "POST /anything/get_reward": (post("/anything/get_reward", {"query": [query]}), 404,
                                      "no endpoint"),
        "GET /score": (lambda: send(port, "GET", "/score", None, normal()), 405, "POST"),
        "NaN literal": (post("/score", b'{"items": [{"prompt": "Q?", "responses": ["a"], '
                                       b'"weight": NaN}]}'), 400, "NaN is not JSON"),
        "Infinity literal": (post("/get_reward", b'{"query": [Infinity]}'), 400,
                             "Infinity is not JSON"),
        # tokens
        "no token": (post("/score", {"items": [item]}, normal(token=None)), 401, "token"),
        "wrong token": (post("/score", {"items": [item]}, normal(token="x" * 40)), 401,
                        "token"),
        "two tokens in one header": (post("/score", {"items": [item]}, [
            *normal(token=None), ("Authorization", f"Bearer {TOKEN} {TOKEN}")]), 400,
            "one header"),
        "two Authorization headers": (post("/score", {"items": [item]}, [
            *normal(), ("Authorization", f"Bearer {TOKEN}")]), 400, "one header"),
        "Basic scheme": (post("/score", {"items": [item]}, [
            *normal(token=None), ("Authorization", f"Basic {TOKEN}")]), 400, "Bearer"),
        # what an RL loop sends by mistake
        "600 kB prompt": (score(prompt="word " * 120_000), 413, "max_tokens"),
        "16 images of 5000x5000": (post("/score", {"items": [{**item, "image": big}] * 16}),
                                   413, "pixels"),
        "a 100000x1 image": (score(image=strip), 400, "aspect ratio"),
        "no image (OpenRLHF's remote RM)": (post("/get_reward", {"query": [query]}), 400,
                                            "images_from="),
        "query unsplittable": (post("/get_reward", {"query": ["no template here"],
                                                    "images": [small]}), 400, "cannot split"),
        "prompts[i] not the query's start": (post("/get_reward", {
            "query": [query], "prompts": ["something else"], "images": [small]}), 400,
            "does not start with"),
        # slow and vanishing clients
        "slow headers": (lambda: raw_socket(port, b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                            wait=0), 408, "headers"),
        "slow body": (lambda: raw_socket(port, (
            f"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{").encode()), 408,
            "body"),
        # refused at the 64 KiB head limit: 400, or a reset where the rest was still unread
        "128 KiB header": (lambda: raw_socket(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            b"X-Big: " + b"a" * (128 << 10) + b"\r\n\r\n"),
                           (400, -1), "Invalid HTTP"),
        "client gives up mid-request": (gives_up, -1, "closed"),
        "a request past request_timeout_s": (lambda: send(port, "POST", "/score",
                                                          heavy_body(pairs), normal()), 504,
                                             "request_timeout_s"),
        # plain bad input
        "10 MB body": (post("/score", b"{" + b" " * (10 << 20) + b"}"), 413,
                       "exceeds the limit"),
        "not JSON": (post("/score", b"{not json"), 400, "not JSON"),
        "JSON array": (post("/score", [1, 2]), 400, "expected a JSON object"),
        "key twice": (post("/score", b'{"items": [], "items": []}'), 400, "given twice"),
        "deep nesting": (post("/score", b'{"items": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
                         400, "nested too deeply"),
        "no items": (post("/score", {}), 400, "items"),
        "257 items": (post("/score", {"items": [item] * 257}), 413, "limit"),
        "item not object": (post("/score", {"items": ["x"]}), 400, "object"),
        "no responses": (score(responses=[]), 400, "non-empty list"),
        "10k responses": (score(responses=["a"] * 10_000), 413, "responses exceed"),
        "response wrong type": (score(responses=[5]), 400, "expected a string"),
        "prompt missing": (post("/score", {"items": [{k: v for k, v in item.items()
                                                      if k != "prompt"}]}), 400, "missing"),
        "bad base64": (score(image="%%%"), 400, "base64"),
        "not an image": (score(image=base64.b64encode(b"hello").decode()), 400,
                         "does not decode"),
        "truncated jpeg": (score(image=base64.b64encode(jpeg[:300]).decode()), 400,
                           "does not decode"),
        "decompression bomb": (score(image=base64.b64encode(bomb_png).decode()), 400,
                               "exceeds the limit"),
        "../ path": (post("/score", {"items": [{"prompt": "Q?", "img_path": "../../x.png",
                                                "responses": ["a"]}]}), 400,
                     "outside the data root"),
        "absolute path": (post("/score", {"items": [{"prompt": "Q?", "img_path": "/etc/passwd",
                                                     "responses": ["a"]}]}), 400,
                          "outside the data root"),
        "both image and path": (score(img_path="x.png"), 400, "exactly one"),
        "query not a list": (post("/get_reward", {"query": "text"}), 400, "non-empty list"),
        "images misaligned": (post("/get_reward", {"query": [query], "images": [small] * 2}),
                              400, "as long as query"),
    }


def valid(port: int) -> tuple[int, float]:
    image = b64(Image.new("RGB", (8, 8), (0, 0, 200)))
    started = time.perf_counter()
    status, _ = send(port, "POST", "/get_reward", json.dumps({
        "query": ["<|user|>What colour?<|end|><|assistant|>Blue.<|end|>"],
        "images": [image]}).encode(), normal(), timeout=20)
    return status, time.perf_counter() - started


def test_hostile_requests_are_refused_and_the_next_valid_one_is_answered(hostile,
                                                                         decompression_bomb):
    running, _, pairs = hostile
    found = cases(running.port, pairs, decompression_bomb)
    assert len(found) >= 40
    report = []
    for name, (sender, status, says) in found.items():
        got, answer = sender()
        allowed = status if isinstance(status, tuple) else (status,)
        assert got in allowed and (got == -1 or says in answer), (name, got, answer[:300])
        ok, seconds = valid(running.port)
        assert ok == 200, (name, ok)            # answered (a 20 s client timeout: no hang)
        report.append({"case": name, "status": got, "says": answer[:160],
                       "next_valid_seconds": round(seconds, 3)})
    if os.environ.get("MMRM_HOSTILE_REPORT"):
        Path(os.environ["MMRM_HOSTILE_REPORT"]).write_text(json.dumps(report, indent=1))
    # every refusal counted by reason in /metrics
    status, text = send(running.port, "GET", "/metrics", None, normal())
    assert status == 200
    for reason in ("content_type", "host", "method", "not_found", "auth", "too_many_tokens",
                   "request_pixels", "aspect_ratio", "no_image", "body_timeout", "timeout",
                   "client_gone", "body_too_large", "bad_json"):
        assert f'mmrm_refusals_total{{reason="{reason}"}}' in text, reason


def test_what_an_rl_loop_may_send_is_answered(hostile):
    """An empty or whitespace completion gets a reward (the RM's reward for an empty
    answer), the Bearer scheme is read case-insensitively, and /health says ready."""
    running, _, pairs = hostile
    port = running.port
    image = base64.b64encode(Path(pairs[0].image_file).read_bytes()).decode()
    body = {"items": [{"prompt": pairs[0].prompt, "image": image,
                       "responses": [pairs[0].chosen, "", "   "]}]}
    status, text = send(port, "POST", "/score", json.dumps(body).encode(), [
        *normal(token=None), ("Authorization", f"bEaReR {TOKEN}")])
    assert status == 200, text
    rewards = json.loads(text)["rewards"][0]
    assert len(rewards) == 3 and all(isinstance(r, float) for r in rewards)
    status, text = send(port, "GET", "/health", None, [("Host", "localhost:1")])
    assert status == 200 and json.loads(text)["status"] == "ready"
    status, text = send(port, "GET", "/metrics", None, normal())
    assert 'mmrm_responses_total{endpoint="/score"}' in text
    assert "mmrm_request_seconds_bucket" in text

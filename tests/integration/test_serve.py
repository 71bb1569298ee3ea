"""``mmrm serve`` for real: a server on a free loopback port, its rewards against ``mmrm
score``'s for the same items (both endpoints, with and without normalisation), hostile
requests answered 4xx with the server still serving, its sockets on loopback, a killed
replica, and a refusal to listen beyond loopback without a token."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from mmrm.data import load_pairs

TOKEN = "a-test-token-of-enough-length-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mmrm serve`` in its own process group, stopped by its pid (SIGTERM, then the group)."""

    def __init__(self, model: Path, tmp: Path, *extra: str):
        self.port = free_port()
        token_file = tmp / "token"
        token_file.write_text(TOKEN)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmrm", "serve", str(model), "--port", str(self.port),
             "--token-file", str(token_file), "--request-timeout", "30", *extra],
            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        deadline = time.time() + 240
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()[-3000:]
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise AssertionError("the server did not come up")

    def request(self, method: str, path: str, body=None, token: str | None = TOKEN,
                raw: bytes | None = None, timeout: float = 60):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        if data is not None and len(data) > 1 << 20:
            return self.stream(method, path, data, token, timeout)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            text = err.read()
            try:
                return err.code, json.loads(text)
            except ValueError:
                return err.code, {"error": text.decode(errors="replace")}

    def stream(self, method: str, path: str, data: bytes, token: str | None, timeout: float):
        """A large body sent in pieces; the server may answer (413) and close before the
        last piece: the answer is read all the same."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.putrequest(method, path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(data)))
        if token:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        try:
            for start in range(0, len(data), 1 << 16):
                conn.send(data[start:start + (1 << 16)])
        except OSError:
            pass
        response = conn.getresponse()
        text = response.read()
        conn.close()
        return response.status, json.loads(text or b"null")

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def family(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.proc.pid),
                    *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def items(tiny_pairs, tmp_path_factory):
    """Six items of three responses from the tiny benchmark, in mmrm's inference format (an
    items file for mmrm score) and as /score items with base64 images."""
    folder = tmp_path_factory.mktemp("serve_items")
    pairs = load_pairs(tiny_pairs[("povid", "test")])[:6]
    rows, http = [], []
    for p in pairs:
        responses = [p.chosen, p.rejected, p.chosen + " It is drawn on a plain background."]
        rows.append({"id": p.id, "prompt": p.prompt, "img_path": str(p.image_file),
                     "responses": responses})
        http.append({"prompt": p.prompt, "responses": responses,
                     "image": base64.b64encode(Path(p.image_file).read_bytes()).decode()})
    path = folder / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, http


def scored_by_mmrm_score(model: Path, items: Path, out: Path, *extra: str) -> list:
    done = subprocess.run([sys.executable, "-m", "mmrm", "score", str(model), str(items),
                           str(out), "--image-root", "/", *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line)["scores"] for line in out.read_text().splitlines()]


def test_a_non_loopback_host_without_a_token_is_refused(trained_runs):
    done = subprocess.run([sys.executable, "-m", "mmrm", "serve",
                           str(trained_runs["none"] / "final"), "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--token-file" in done.stderr, done.stderr[-1000:]


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_http_rewards_equal_mmrm_score_through_both_endpoints(trained_runs, items, tmp_path,
                                                              normalize):
    model = trained_runs["none"] / "final"
    path, http = items
    flag = ["--normalize"] if normalize else []
    expected = scored_by_mmrm_score(model, path, tmp_path / "scores.jsonl", *flag)
    server = Server(model, tmp_path, *flag)
    try:
        status, body = server.post("/score", {"items": http})
        assert status == 200, body
        diffs = [abs(a - b) for got, want in zip(body["rewards"], expected)
                 for a, b in zip(got, want)]
        assert len(diffs) == 18 and max(diffs) <= 1e-5, max(diffs)
        # OpenRLHF's shape: the query in the model's chat template, the image aligned
        queries = [f"<|user|><image>{h['prompt']}<|end|><|assistant|>{r}<|end|>"
                   for h in http for r in h["responses"]]
        images = [h["image"] for h in http for _ in h["responses"]]
        status, body = server.post("/get_reward", {"query": queries, "images": images,
                                                   "labels": [""] * len(queries)})
        assert status == 200 and body["rewards"] == body["scores"], body
        flat = [r for rs in expected for r in rs]
        assert max(abs(a - b) for a, b in zip(body["rewards"], flat)) <= 1e-5
        status, info = server.get("/info")
        assert status == 200 and info["normalize"] is normalize and len(info["digest"]) == 64
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(trained_runs, tiny_pairs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    root = Path(load_pairs(tiny_pairs[("povid", "test")])[0].image_file).parent.parent
    running = Server(trained_runs["none"] / "final", tmp, "--image-root", str(root),
                     "--max-body-mb", "1", "--max-items", "8", "--max-responses", "4",
                     "--max-image-pixels", "250000")
    yield running, root
    running.stop()


def openrlhf_query(prompt="What colour is the shape?", response="It is red."):
    return f"<|user|>{prompt}<|end|><|assistant|>{response}<|end|>"


def hostile_requests(root: Path, bomb_png: bytes) -> dict:
    """Requests the server must answer with a 4xx and a message (name -> (method, path,
    body or raw bytes, token, status, what the message says))."""
    import io

    from PIL import Image

    def b64(image: Image.Image, fmt="PNG") -> str:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        return base64.b64encode(buffer.getvalue()).decode()

    small = b64(Image.new("RGB", (8, 8), (200, 0, 0)))
    jpeg = base64.b64decode(b64(Image.new("RGB", (64, 64), (0, 200, 0)), "JPEG"))
    bomb = base64.b64encode(bomb_png).decode()
    item = {"prompt": "Q?", "image": small, "responses": ["a", "b"]}
    return {
        "no token": ("POST", "/score", {"items": [item]}, None, 401, "token"),
        "wrong token": ("POST", "/score", {"items": [item]}, "x" * 40, 401, "token"),
        "10 MB body": ("POST", "/score", b"{" + b" " * (10 << 20) + b"}", TOKEN, 413,
                       "exceeds the limit"),
        "not JSON": ("POST", "/score", b"{not json", TOKEN, 400, "not JSON"),
        "JSON array": ("POST", "/score", [1, 2], TOKEN, 400, "expected a JSON object"),
        "key twice": ("POST", "/score", b'{"items": [], "items": []}', TOKEN, 400,
                      "given twice"),
        "deep nesting": ("POST", "/score", b'{"items": ' + b"[" * 50_000 + b"]" * 50_000
                         + b"}", TOKEN, 400, "nested too deeply"),
        "no items": ("POST", "/score", {}, TOKEN, 400, "items"),
        "too many items": ("POST", "/score", {"items": [item] * 9}, TOKEN, 413, "limit"),
        "item not object": ("POST", "/score", {"items": ["x"]}, TOKEN, 400, "object"),
        "empty responses": ("POST", "/score", {"items": [{**item, "responses": []}]}, TOKEN,
                            400, "non-empty list"),
        "10k responses": ("POST", "/score", {"items": [{**item, "responses": ["a"] * 10_000}]},
                          TOKEN, 413, "responses exceed"),
        "response wrong type": ("POST", "/score", {"items": [{**item, "responses": [5]}]},
                                TOKEN, 400, "expected a string"),
        "empty response": ("POST", "/score", {"items": [{**item, "responses": [" "]}]},
                           TOKEN, 400, "empty"),
        "prompt missing": ("POST", "/score", {"items": [{k: v for k, v in item.items()
                                                         if k != "prompt"}]}, TOKEN, 400,
                           "missing"),
        "bad base64": ("POST", "/score", {"items": [{**item, "image": "%%%"}]}, TOKEN, 400,
                       "base64"),
        "not an image": ("POST", "/score", {"items": [{**item, "image": base64.b64encode(
            b"hello").decode()}]}, TOKEN, 400, "does not decode"),
        "truncated jpeg": ("POST", "/score", {"items": [{**item, "image": base64.b64encode(
            jpeg[:300]).decode()}]}, TOKEN, 400, "does not decode"),
        "decompression bomb": ("POST", "/score", {"items": [{**item, "image": bomb}]}, TOKEN,
                               400, "exceeds the limit"),
        "../ path": ("POST", "/score", {"items": [{"prompt": "Q?", "img_path": "../../x.png",
                                                  "responses": ["a"]}]}, TOKEN, 400,
                     "outside the data root"),
        "absolute path": ("POST", "/score", {"items": [{"prompt": "Q?", "img_path":
                                                        "/etc/passwd", "responses": ["a"]}]},
                          TOKEN, 400, "outside the data root"),
        "both image and path": ("POST", "/score", {"items": [{**item, "img_path": "x.png"}]},
                                TOKEN, 400, "exactly one"),
        "query not a list": ("POST", "/get_reward", {"query": "text"}, TOKEN, 400,
                             "non-empty list"),
        "images misaligned": ("POST", "/get_reward", {"query": [openrlhf_query()],
                                                      "images": [small, small]}, TOKEN, 400,
                              "as long as query"),
        "query unsplittable": ("POST", "/get_reward", {"query": ["no template here"]}, TOKEN,
                               400, "cannot split"),
        "unknown endpoint": ("POST", "/nope", {}, TOKEN, 404, "no endpoint"),
    }


def test_hostile_requests_get_a_4xx_and_the_server_still_serves(server, decompression_bomb):
    running, root = server
    cases = hostile_requests(root, decompression_bomb)
    assert len(cases) >= 20
    for name, (method, path, body, token, status, says) in cases.items():
        raw = body if isinstance(body, bytes) else None
        got, answer = running.request(method, path, None if raw else body, token=token,
                                      raw=raw)
        assert got == status and says in json.dumps(answer), (name, got, answer)
        ok, rewards = running.post("/get_reward", {"query": [openrlhf_query()]})
        assert ok == 200 and len(rewards["rewards"]) == 1, (name, rewards)
    assert running.get("/health", token=None)[0] == 200      # health needs no token
    assert running.get("/info", token=None)[0] == 401


def is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_every_listening_socket_is_on_loopback(server):
    running, _ = server
    listening = []
    for proc in running.family():
        try:
            listening += [(" ".join(proc.cmdline())[:60], c.laddr.ip)
                          for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert len(listening) >= 5, listening      # GCS, raylet, proxy, replica, ... at least
    assert all(is_loopback(ip) for _, ip in listening), \
        [x for x in listening if not is_loopback(x[1])]


def test_a_killed_replica_costs_answers_or_errors_never_a_hang(server):
    from concurrent.futures import ThreadPoolExecutor

    running, _ = server
    replica = next(p for p in running.family() if "ServeReplica" in " ".join(p.cmdline()))
    body = {"query": [openrlhf_query()] * 4}

    def call(_):
        started = time.time()
        try:
            status, _ = running.post("/get_reward", body, timeout=45)
        except OSError:                       # the connection dropped: an answer too
            status = -1
        return status, time.time() - started

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, k) for k in range(24)]
        time.sleep(0.5)
        replica.kill()
        results = [f.result() for f in futures]
    assert all(seconds < 45 for _, seconds in results), results
    assert {status for status, _ in results} <= {200, 500, 502, 503, 504, 408, -1}, results
    deadline = time.time() + 120
    while time.time() < deadline:             # Serve restarts the replica
        if running.post("/get_reward", body, timeout=30)[0] == 200:
            break
        time.sleep(2)
    else:
        raise AssertionError("the server did not serve again")


def test_the_example_client_and_trl_reward_function(server, tiny_pairs):
    import importlib.util

    running, _ = server
    spec = importlib.util.spec_from_file_location(
        "reward_client", Path(__file__).resolve().parents[2] / "examples" / "reward_client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    url = f"http://127.0.0.1:{running.port}"
    pair = load_pairs(tiny_pairs[("povid", "test")])[0]
    rewards = client.score(url, [{"prompt": pair.prompt, "image": pair.image_file,
                                  "responses": [pair.chosen, pair.rejected]}], TOKEN)
    reward = client.MmrmReward(url, TOKEN)
    trl = reward([[{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": pair.prompt}]}]] * 2,
                 [pair.chosen, pair.rejected], image=[str(pair.image_file)] * 2)
    assert trl == pytest.approx(rewards[0], abs=1e-5) and len(trl) == 2
    query = f"<|user|><image>{pair.prompt}<|end|><|assistant|>{pair.chosen}<|end|>"
    assert client.get_reward(url, [query], images=[pair.image_file], token=TOKEN) == \
        pytest.approx([rewards[0][0]], abs=1e-5)

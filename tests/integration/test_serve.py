"""``mmrm serve`` for real: a server on a free loopback port, its rewards against ``mmrm
score``'s for the same items (both endpoints, with and without normalisation; a query in
every known policy template; OpenRLHF's shape against an image index), the hostile requests
of ``test_serve_hostile.py``'s corpus, its sockets on loopback, a killed replica, the client
grouping a prompt's completions, and a refusal to listen beyond loopback without a token."""

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mmrm.data import load_pairs
from serving import TOKEN, Server


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
                           str(trained_runs["none"] / "final"), "host=0.0.0.0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "token_file=" in done.stderr, done.stderr[-1000:]


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_http_rewards_equal_mmrm_score_through_both_endpoints(trained_runs, items, tmp_path,
                                                              normalize):
    model = trained_runs["none"] / "final"
    path, http = items
    flag = ["normalize=true"] if normalize else []
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
    running = Server(trained_runs["none"] / "final", tmp, "--image-root", str(root))
    yield running, root
    running.stop()


def openrlhf_query(prompt="What colour is the shape?", response="It is red."):
    return f"<|user|>{prompt}<|end|><|assistant|>{response}<|end|>"


#: The same (prompt, response) as each family's released chat template renders it (the
#: query an RL policy of that family sends), and its rendered prompt with the generation
#: prompt (OpenRLHF's ``prompts``) plus what the policy appends after the response.
FAMILY_SHAPES = {
    "qwen2_vl": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user"
                 "\n<|vision_start|><|image_pad|><|vision_end|>{p}<|im_end|>\n<|im_start|>"
                 "assistant\n", "<|im_end|><|endoftext|>"),
    "internvl": ("<|im_start|>system\n你是书生·万象。<|im_end|>\n<|im_start|>user\n<img>"
                 "<IMG_CONTEXT><IMG_CONTEXT></img>\n{p}<|im_end|>\n<|im_start|>assistant\n",
                 "<|im_end|>"),
    "llava": ("A chat between a curious human and an artificial intelligence assistant. "
              "USER: <image>\n{p} ASSISTANT:", "</s>"),
    "llava_mistral": ("[INST] <image>\n{p} [/INST]", "</s><pad><pad>"),
    "idefics3": ("<|begin_of_text|>User:<image>{p}<end_of_utterance>\nAssistant:",
                 "<end_of_utterance>\n"),
    "reward model": ("<|user|><image>{p}<|end|><|assistant|>", "<|end|>"),
}


def test_a_query_in_every_policy_template_gets_the_reward_of_mmrm_score(server, items,
                                                                          tmp_path, trained_runs):
    """The same (prompt, image, response) in each family's shape, with and without
    OpenRLHF's ``prompts``: one reward, equal to ``mmrm score``'s (``MMRM_TEMPLATE_REPORT=path``
    writes each family's difference, what the serve issue's closing note quotes)."""
    running, _ = server
    differences = {}
    path, http = items
    expected = scored_by_mmrm_score(trained_runs["none"] / "final", path,
                                    tmp_path / "scores.jsonl")
    item, want = http[0], expected[0]
    for k, response in enumerate(item["responses"][:2]):
        queries, prompts = [], []
        for family, (prompt, after) in FAMILY_SHAPES.items():
            rendered = prompt.format(p=item["prompt"])
            # a space after the generation prompt where the family puts one (LLaVA's "
            # ASSISTANT: A cat"), none after a newline
            gap = "" if rendered.endswith("\n") else " "
            queries.append(rendered + gap + response + after)
            prompts.append(rendered + gap)
        images = [item["image"]] * len(queries)
        for body in ({"query": queries, "images": images},
                     {"query": queries, "prompts": prompts, "images": images}):
            status, got = running.post("/get_reward", body)
            assert status == 200, (body.keys(), got)
            for family, r in zip(FAMILY_SHAPES, got["rewards"]):
                differences[family] = max(differences.get(family, 0.0), abs(r - want[k]))
            assert max(abs(r - want[k]) for r in got["rewards"]) <= 1e-5, \
                (dict(zip(FAMILY_SHAPES, got["rewards"])), want[k])
    if os.environ.get("MMRM_TEMPLATE_REPORT"):
        Path(os.environ["MMRM_TEMPLATE_REPORT"]).write_text(json.dumps(differences, indent=1))
    # a query in no known template is refused, naming the templates it tried
    status, got = running.post("/get_reward", {"query": ["<s>Human: hi</s>"],
                                               "images": [item["image"]]})
    assert status == 400 and "qwen2_vl" in got["error"] and got["field"] == "query"


def test_openrlhfs_exact_shape_against_an_image_index(trained_runs, items, tiny_pairs,
                                                       tmp_path):
    """OpenRLHF sends ``query`` + ``prompts`` and no images: with ``images_from=`` the
    server finds each prompt's image and the reward equals ``/score``'s with the image; a
    prompt the index lacks is refused, never scored against a blank image."""
    path, http = items
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    index = tmp_path / "prompts.jsonl"
    index.write_text("".join(json.dumps({"prompt": r["prompt"], "img_path": r["img_path"]})
                             + "\n" for r in rows[:1]))
    running = Server(trained_runs["none"] / "final", tmp_path, f"images_from={index}",
                     "--image-root", "/")
    try:
        status, scored = running.post("/score", {"items": http[:1]})
        assert status == 200
        prompt = f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" \
                 f"{http[0]['prompt']}<|im_end|>\n<|im_start|>assistant\n"
        queries = [prompt + r + "<|im_end|>" for r in http[0]["responses"]]
        status, got = running.post("/get_reward", {"query": queries,
                                                   "prompts": [prompt] * len(queries),
                                                   "labels": [""] * len(queries)})
        assert status == 200, got
        assert got["rewards"] == pytest.approx(scored["rewards"][0], abs=1e-5)
        assert got["images"] == ["index:1"] * len(queries)
        status, info = running.get("/info")
        assert info["images"].startswith(f"index:{index} (1 prompts)")
        other = prompt.replace(http[0]["prompt"], "A prompt the index does not hold?")
        status, got = running.post("/get_reward", {"query": [other + "Yes.<|im_end|>"],
                                                   "prompts": [other]})
        assert status == 400 and "has no such prompt" in got["error"]
    finally:
        running.stop()


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


def test_a_killed_replica_costs_answers_or_errors_never_a_hang(server, items):
    from concurrent.futures import ThreadPoolExecutor

    running, _ = server
    replica = next(p for p in running.family() if "ServeReplica" in " ".join(p.cmdline()))
    body = {"query": [openrlhf_query()] * 4, "images": [items[1][0]["image"]] * 4}

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
    assert {status for status, _ in results} <= {200, 503, 504, -1}, results
    deadline = time.time() + 120
    while time.time() < deadline:             # Serve restarts the replica
        if running.post("/get_reward", body, timeout=30)[0] == 200:
            break
        time.sleep(2)
    else:
        raise AssertionError("the server did not serve again")


def example_client():
    """The client as a machine without mmrm would run it: the one file, loaded alone (it
    imports nothing of mmrm)."""
    import importlib.util

    import mmrm.serve.client

    spec = importlib.util.spec_from_file_location("reward_client", mmrm.serve.client.__file__)
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    assert not [name for name in vars(client) if name.startswith("mmrm")]
    return client


def test_the_example_client_and_trl_reward_function(server, tiny_pairs):
    from PIL import Image

    running, _ = server
    client = example_client()
    url = f"http://127.0.0.1:{running.port}"
    pairs = load_pairs(tiny_pairs[("povid", "test")])[:2]
    rewards = client.score(url, [{"prompt": p.prompt, "image": p.image_file,
                                  "responses": [p.chosen, p.rejected, ""]} for p in pairs],
                           TOKEN)
    assert len(rewards) == 2 and all(len(r) == 3 for r in rewards)
    # TRL: two prompts x 3 completions, each prompt's image one object repeated: the client
    # sends 2 items of 3 responses (one image each), the rewards come back in TRL's order
    reward = client.MmrmReward(url, TOKEN)
    sent = []
    original = client.Server.post

    def counting(self, path, body):
        sent.append(body)
        return original(self, path, body)

    client.Server.post = counting
    try:
        images = [Image.open(p.image_file).convert("RGB") for p in pairs]
        chat = [[{"role": "user", "content": [{"type": "image"},
                                              {"type": "text", "text": p.prompt}]}]
                for p in pairs]
        order = [0, 0, 0, 1, 1, 1]
        completions = [pairs[0].chosen, pairs[0].rejected, "", pairs[1].chosen,
                       pairs[1].rejected, ""]
        trl = reward([chat[i] for i in order], completions, image=[images[i] for i in order])
    finally:
        client.Server.post = original
    assert trl == pytest.approx([*rewards[0], *rewards[1]], abs=1e-5)
    assert len(sent) == 1 and [len(it["responses"]) for it in sent[0]["items"]] == [3, 3]
    # a batch over the server's limits is cut into several requests: 300 completions of one
    # prompt (max_responses 64): 5 items in one request, rewards back in order
    many = client.score(url, [{"prompt": pairs[0].prompt, "image": pairs[0].image_file,
                               "responses": [pairs[0].chosen, pairs[0].rejected] * 150}],
                        TOKEN)
    assert len(many[0]) == 300 and many[0][:2] == pytest.approx(rewards[0][:2], abs=1e-5)
    # a text-only row is sent without an image: this server refuses it, saying why
    with pytest.raises(RuntimeError, match="no image"):
        client.score(url, [{"prompt": "Hi?", "image": None, "responses": ["Hello."]}], TOKEN)
    query = f"<|user|><image>{pairs[0].prompt}<|end|><|assistant|>{pairs[0].chosen}<|end|>"
    assert client.get_reward(url, [query], images=[pairs[0].image_file], token=TOKEN) == \
        pytest.approx([rewards[0][0]], abs=1e-5)


def test_the_client_retries_a_busy_server(monkeypatch):
    """A 503 (busy, or a replica restarting) is retried with backoff, honouring
    Retry-After; another error is raised at once."""
    import io
    import urllib.error

    client = example_client()
    answers = [503, 503, 200]
    slept = []

    def urlopen(request, timeout):
        status = answers.pop(0)
        if status != 200:
            raise urllib.error.HTTPError(request.full_url, status, "busy",
                                         {"Retry-After": "1"}, io.BytesIO(b"{}"))
        return io.BytesIO(b'{"rewards": [[0.5]]}')

    monkeypatch.setattr(client.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(client.time, "sleep", slept.append)
    assert client.Server("http://x").post("/score", {}) == {"rewards": [[0.5]]}
    assert slept == [1.0, 2.0]
    answers[:] = [400]
    with pytest.raises(RuntimeError, match="400"):
        client.Server("http://x").post("/score", {})

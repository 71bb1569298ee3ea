"""Throughput and latency of ``mmrm serve`` under concurrent clients, against one request at a
time, in the same invocation; with ``--rl``, an RL loop's load instead: each step scores G
completions of P prompts (GRPO's group), sent grouped (one item of G responses per prompt:
its image and prompt encoded once) against one item per completion (the image sent and
encoded G times), in the same invocation, steps interleaved.

Starts ``mmrm serve MODEL`` on a free 127.0.0.1 port (its own process group, stopped by its pid
at the end), then sends the same requests (each: one item, its image as base64, ``--responses``
answers to score) one at a time, then from 1, 8 and 32 concurrent clients; every client
stops by itself after its share of ``--requests``. Prints requests/s, responses/s, p50 and p99
latency per concurrency and the throughput ratio against the sequential run (the server
batches concurrent requests: ``serve.batch``).

    python benchmarks/serve_load.py          # after make run: the povid none RM, its test pairs
    python benchmarks/serve_load.py --rl --group 8 --prompts 16
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmrm.cluster import stop_process_group  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "mmrm", "serve", str(model), "--port",
                             str(port), f"threads={threads}"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mmrm serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(1)
    stop_process_group(proc)
    raise SystemExit("mmrm serve did not come up in 300 s")


def make_requests(pairs: Path, count: int, responses: int) -> list[bytes]:
    """``count`` /score bodies of one item each (cycling over the pairs' first items)."""
    rows = [json.loads(line) for line in pairs.read_text().splitlines()[:64]]
    bodies = []
    for k in range(count):
        row = rows[k % len(rows)]
        image = base64.b64encode((pairs.parent / row["img_path"]).read_bytes()).decode()
        answers = [row["chosen"], row["rejected"]] * responses
        bodies.append(json.dumps({"items": [{"prompt": row["prompt"], "image": image,
                                             "responses": answers[:responses]}]}).encode())
    return bodies


_connections = threading.local()


def post(port: int, body: bytes) -> float:
    """One /score request on this client thread's kept-alive connection (as an RL loop's
    HTTP session keeps one); its latency."""
    conn = getattr(_connections, "conn", None)
    if conn is None:
        conn = _connections.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("POST", "/score", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200:
        raise SystemExit(f"/score answered {response.status}: {answer[:300]!r}")
    json.loads(answer)
    return time.perf_counter() - started


def run(port: int, bodies: list[bytes], clients: int) -> dict:
    """Every body sent once by ``clients`` threads, each taking the next one until none is
    left; the wall time and each request's latency."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda body: post(port, body), bodies))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"clients": clients, "wall": wall, "rps": len(bodies) / wall,
            "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--model", type=Path,
                        default=Path("runs/pipeline/models/povid/none/final"))
    parser.add_argument("--pairs", type=Path, default=Path("data/envs/povid/test.jsonl"))
    parser.add_argument("--requests", type=int, default=192, help="Requests per run.")
    parser.add_argument("--responses", type=int, default=4, help="Answers per request.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the replica.")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds of every run, "
                        "interleaved (sequential, then each concurrency); medians reported.")
    parser.add_argument("--rl", action="store_true", help="The RL load: grouped against one "
                        "item per completion.")
    parser.add_argument("--group", type=int, default=8, help="--rl: completions per prompt.")
    parser.add_argument("--prompts", type=int, default=16, help="--rl: prompts per step.")
    parser.add_argument("--steps", type=int, default=8, help="--rl: steps per round.")
    args = parser.parse_args()
    if args.rl:
        return main_rl(args)
    bodies = make_requests(args.pairs, args.requests, args.responses)
    port = free_port()
    server = start_server(args.model, port, args.threads)
    runs: dict[str, list[dict]] = {}
    try:
        run(port, bodies[:32], 8)               # warm-up: model, tokenizer, batch shapes
        for _ in range(args.repeats):
            runs.setdefault("sequential (baseline)", []).append(run(port, bodies, 1))
            for clients in args.concurrency:
                runs.setdefault(f"concurrency {clients}", []).append(
                    run(port, bodies, clients))
    finally:
        stop_process_group(server)
    report(args, {name: median_row(rows) for name, rows in runs.items()})


def rl_steps(pairs: Path, steps: int, prompts: int, group: int) -> list[tuple[bytes, bytes]]:
    """Per step, the same P prompts x G completions as one /score body grouped (P items of
    G responses) and one ungrouped (P x G items of one response, the image in each)."""
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    bodies = []
    for step in range(steps):
        chosen = [rows[(step * prompts + k) % len(rows)] for k in range(prompts)]
        grouped, flat = [], []
        for row in chosen:
            image = base64.b64encode((pairs.parent / row["img_path"]).read_bytes()).decode()
            answers = [(row["chosen"], row["rejected"])[g % 2] + " " * (g // 2)
                       for g in range(group)]
            grouped.append({"prompt": row["prompt"], "image": image, "responses": answers})
            flat += [{"prompt": row["prompt"], "image": image, "responses": [a]}
                     for a in answers]
        bodies.append((json.dumps({"items": grouped}).encode(),
                       json.dumps({"items": flat}).encode()))
    return bodies


def main_rl(args) -> None:
    steps = rl_steps(args.pairs, args.steps, args.prompts, args.group)
    port = free_port()
    server = start_server(args.model, port, args.threads)
    seconds = {"grouped": [], "one item per completion": []}
    try:
        post(port, steps[0][0]), post(port, steps[0][1])          # warm-up
        for _ in range(args.repeats):
            for grouped, flat in steps:               # interleaved: drift hits both alike
                seconds["grouped"].append(post(port, grouped))
                seconds["one item per completion"].append(post(port, flat))
    finally:
        stop_process_group(server)
    responses = args.prompts * args.group
    print(f"{args.model}, RL steps of {args.prompts} prompts x G={args.group} completions "
          f"({responses} responses), {len(steps)} steps x {args.repeats} rounds, 1 replica, "
          f"{args.threads} torch thread(s), 127.0.0.1; medians")
    print(f"{'sent as':<26}{'s/step':>8}{'resp/s':>9}")
    rates = {}
    for name, values in seconds.items():
        rates[name] = responses / statistics.median(values)
        print(f"{name:<26}{statistics.median(values):>8.3f}{rates[name]:>9.1f}")
    print(f"grouped / one item per completion: "
          f"{rates['grouped'] / rates['one item per completion']:.2f}x responses/s")


def median_row(rows: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in rows) for key in ("rps", "p50", "p99")}


def report(args, rows: dict[str, dict]) -> None:
    print(f"{args.model}, {args.requests} requests of 1 item x {args.responses} responses, "
          f"1 replica, {args.threads} torch thread(s), 127.0.0.1, medians of {args.repeats}")
    print(f"{'clients':<22}{'req/s':>8}{'resp/s':>9}{'p50 s':>8}{'p99 s':>8}{'vs seq':>8}")
    baseline = rows["sequential (baseline)"]["rps"]
    for name, row in rows.items():
        print(f"{name:<22}{row['rps']:>8.1f}{row['rps'] * args.responses:>9.1f}"
              f"{row['p50']:>8.3f}{row['p99']:>8.3f}{row['rps'] / baseline:>7.2f}x")


if __name__ == "__main__":
    main()

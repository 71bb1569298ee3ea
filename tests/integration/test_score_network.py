"""The local Ray cluster that ``mmrm score`` starts listens on loopback only, with Ray's token
authentication left on, and is gone when the command ends."""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import psutil

from mmrm.data import load_pairs



def listening(processes) -> dict[int, set[str]]:
    """Listening TCP addresses of each process, by pid."""
    found = {}
    for proc in processes:
        try:
            addresses = {c.laddr.ip for c in proc.net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if addresses:
            found[proc.pid] = addresses
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_local_cluster_binds_to_loopback_only(trained_runs, tiny_pairs, tmp_path):
    pairs = load_pairs(tiny_pairs[("povid", "test")])[:8]
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt,
                                         "img_path": str(p.image_file),
                                         "responses": [p.chosen, p.rejected]}) + "\n"
                             for p in pairs))
    out = tmp_path / "scores.jsonl"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["MMRM_TEST_BATCH_DELAY"] = "1.0"          # keeps the cluster up while we look
    proc = subprocess.Popen([sys.executable, "-m", "mmrm", "score",
                             str(trained_runs["none"] / "final"), str(items), str(out),
                             "workers=1", "chunk_items=2", "batch_responses=4",
                             "--image-root", "/"],
                            env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: dict[int, set[str]] = {}
    started: set[int] = set()
    try:
        deadline = time.time() + 180
        while proc.poll() is None and time.time() < deadline:
            family = psutil.Process(proc.pid).children(recursive=True) \
                if psutil.pid_exists(proc.pid) else []
            started |= {p.pid for p in family}
            for pid, addresses in listening(family).items():
                seen.setdefault(pid, set()).update(addresses)
            time.sleep(0.3)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    assert len(seen) >= 3, seen        # GCS, raylet, the worker (at least) were listening
    assert all(is_loopback(ip) for addresses in seen.values() for ip in addresses), seen
    assert "Token authentication is enabled" in stdout + stderr
    # the command stopped what it started
    time.sleep(2)
    left = [pid for pid in started if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, left
    assert len(out.read_text().splitlines()) == 8

"""Start and stop the project's local servers on 127.0.0.1, each tracked by its own pid file
(never stopped by name): a Prefect server with the project's ``PREFECT_HOME``, the process
serving the deployments, and the MLflow UI over the project's store.

    python scripts/services.py start prefect     # server + serve (flows/serve.py)
    python scripts/services.py start mlflow      # UI on http://127.0.0.1:5000
    python scripts/services.py stop [prefect|mlflow|all]
    python scripts/services.py status

Also importable: :func:`start_prefect` / :func:`stop` are what the integration test uses.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(home: Path, port: int) -> dict:
    return {**os.environ, "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port)}


def _spawn(cmd: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    """A process in its own session (process group), so it and its children stop together."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before "
                               f"{url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_prefect(state: Path, project: Path, port: int | None = None,
                  serve: bool = True) -> dict:
    """Prefect server (+ the serve process) for ``project``; returns pids, port and env."""
    port = port or free_port()
    env = prefect_env(state / "prefect-home", port)
    server = _spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                     "--port", str(port)], state / "prefect-server.log", env, project)
    info = {"port": port, "pids": {"prefect-server": server.pid},
            "api": env["PREFECT_API_URL"], "home": env["PREFECT_HOME"]}
    _save(state, info["pids"])
    wait_http(f"http://127.0.0.1:{port}/api/health", 180, server)
    if serve:
        worker = _spawn([sys.executable, str(ROOT / "flows" / "serve.py")],
                        state / "prefect-serve.log", env, project)
        info["pids"]["prefect-serve"] = worker.pid
        _save(state, info["pids"])
        # return only once the deployments can be run (no "Deployment not found" race)
        wait_deployments(info["api"], DEPLOYMENTS, 180, worker, state / "prefect-serve.log")
    (state / "prefect.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


#: What flows/serve.py serves.
DEPLOYMENTS = ("mmrm-pipeline/builtin", "mmrm-score/file")


def wait_deployments(api: str, names: tuple[str, ...], timeout: float,
                     proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flows/serve.py exited with {proc.returncode} before serving: "
                               f"{log.read_text()[-2000:]}")
        request = urllib.request.Request(api + "/deployments/filter", method="POST",
                                         data=b"{}", headers={"Content-Type":
                                                              "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                found = json.loads(response.read())
            flows = _flow_names(api)
            served = {f"{flows.get(d['flow_id'], '?')}/{d['name']}" for d in found}
            if set(names) <= served:
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"deployments {names} were not served within {timeout:.0f} s")


def _flow_names(api: str) -> dict[str, str]:
    request = urllib.request.Request(api + "/flows/filter", method="POST", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return {f["id"]: f["name"] for f in json.loads(response.read())}


def start_mlflow(state: Path, project: Path, port: int = 5000) -> dict:
    store = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / 'mlflow.db'}"
    proc = _spawn([str(BIN / "mlflow"), "server", "--backend-store-uri", store,
                   "--default-artifact-root", (project / "mlartifacts").as_uri(),
                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                  state / "mlflow.log", {**os.environ}, project)
    _save(state, {"mlflow": proc.pid})
    wait_http(f"http://127.0.0.1:{port}/health", 120, proc)
    return {"port": port, "pid": proc.pid, "url": f"http://127.0.0.1:{port}"}


def stop(state: Path, names: list[str] | None = None, grace: float = 15.0) -> list[str]:
    """Stop the recorded processes by their own process group, the last started first (the
    serve process before the server it talks to): SIGINT (a clean shutdown), SIGTERM, then
    SIGKILL (a Prefect worker may ignore the first SIGTERM)."""
    pids = _load(state)
    stopped = []
    for name in names or list(reversed(pids)):
        pid = pids.pop(name, None)
        if pid is None:
            continue
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace),
                          (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline and _alive(pid):
                time.sleep(0.2)
            if not _alive(pid):
                break
        stopped.append(name)
    _write(state, pids)
    return stopped


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)   # reap it if it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _load(state: Path) -> dict:
    path = state / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write(state: Path, pids: dict) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "pids.json").write_text(json.dumps(pids, indent=2) + "\n")


def _save(state: Path, new: dict) -> None:
    _write(state, {**_load(state), **new})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("service", nargs="?", default="all",
                        choices=["prefect", "mlflow", "all"])
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    state = ROOT / ".services"
    if args.action == "start":
        if args.service in ("prefect", "all"):
            info = start_prefect(state, ROOT, args.port or 4200)
            print(f"Prefect UI/API: http://127.0.0.1:{info['port']} (PREFECT_HOME "
                  f"{info['home']}); deployments served by flows/serve.py\n"
                  f"run: PREFECT_API_URL={info['api']} prefect deployment run "
                  f"'mmrm-pipeline/builtin'")
        if args.service in ("mlflow", "all"):
            info = start_mlflow(state, ROOT, args.port or 5000)
            print(f"MLflow UI: {info['url']}")
    elif args.action == "stop":
        names = {"prefect": ["prefect-serve", "prefect-server"], "mlflow": ["mlflow"]}
        print("stopped:", stop(state, names.get(args.service)))
    else:
        print(json.dumps({k: (v, _alive(v)) for k, v in _load(state).items()}, indent=2))


if __name__ == "__main__":
    main()

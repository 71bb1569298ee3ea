"""A real ``mmrm serve`` for the serve tests: in its own process group on a free loopback
port, stopped by its pid (SIGTERM, then the group)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from mmrm.cluster import stop_process_group

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
             f"token_file={token_file}", "request_timeout_s=30", *extra],
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
        stop_process_group(self.proc)

"""Who may reach the server: loopback unless a token is given, the bearer token read once,
the ``Host`` names a loopback server answers to (a browser page cannot rebind a name of its
own to 127.0.0.1 and reach it), and the replicas' own sockets on loopback too."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from mmrm.config import ServeConfig

#: Host names a loopback server answers to.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def read_token(config: ServeConfig) -> str | None:
    """The bearer token (``token_file=``); refuses to go on without one where the host is
    not loopback."""
    if config.token_file is None:
        if not is_loopback(config.host):
            raise ValueError(f"host={config.host} is not loopback: give token_file= (a "
                             f"bearer token every request but /health must carry)")
        return None
    token = Path(config.token_file).read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{config.token_file}: the token is shorter than 16 characters")
    return token


def host_name(value: str) -> str:
    """The name of a ``Host`` header value: ``127.0.0.1:8000`` -> ``127.0.0.1``,
    ``[::1]:8000`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(config: ServeConfig, values: list[str]) -> bool:
    """One ``Host`` header, naming this machine's loopback where the server listens on
    loopback (elsewhere the token guards the server, and any name reaches it)."""
    if len(values) != 1:
        return False
    if not is_loopback(config.host):
        return True
    return host_name(values[0]) in LOOPBACK_NAMES


def authorized(token: str | None, values: list[str]) -> bool | None:
    """Whether the ``Authorization`` headers carry the token: True, False (missing or
    wrong), or None for a malformed one (two headers, two tokens, another scheme). The
    scheme is read case-insensitively (RFC 9110)."""
    if token is None:
        return True
    if not values:
        return False
    if len(values) > 1:
        return None
    parts = values[0].split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return hmac.compare_digest(parts[1].encode(), token.encode())


def bind_replica_grpc_to_loopback() -> None:
    """Ray Serve 2.60's replica opens its inter-deployment gRPC server on ``[::]:0`` (every
    interface) after the deployment's constructor runs; for a loopback server this rebinds
    it to 127.0.0.1 by wrapping the one function the replica calls (a private Ray name: if
    it moves, this does nothing and the socket test says so)."""
    try:
        import ray.serve._private.replica as replica
    except ImportError:
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "mmrm_loopback", False):
        return

    def loopback(server, address: str):
        return bind(server, address.replace("[::]:", "127.0.0.1:", 1))

    loopback.mmrm_loopback = True
    replica.add_port_to_grpc_server = loopback

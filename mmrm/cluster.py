"""The Ray cluster every Ray user of mmrm joins or starts (batch scoring, the reward server,
the Prefect flow's trainings): a local one reachable from this machine only, or the one at an
address that answers."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["start_ray", "check_address", "stop_process_group"]


def start_ray(address: str | None, **init_kwargs) -> None:
    """Join the cluster at ``address``, or start a local one that only this machine can
    reach: every Ray process binds to 127.0.0.1 (Ray treats a node whose IP is loopback as
    local-only), no dashboard, and Ray's token authentication as Ray sets it (on by default
    for local clusters since Ray 2.59; mmrm never turns it off)."""
    import ray

    check_address(address)
    if address is None:
        from ray._private import ray_constants

        # On Linux Ray advertises (and binds to) the machine's network address unless this
        # is off; then the node IP is 127.0.0.1 and GCS, raylet, workers and agents listen
        # there only. The variable reaches Ray's own subprocesses; the constant this process.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=False, **init_kwargs)


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A cluster ``address`` (``host:port``, ``ray://host:port``) that accepts a connection
    within ``timeout`` seconds, or a one-line error at once (Ray itself waits and retries
    for minutes). ``auto`` and None are Ray's own lookups."""
    import socket

    if address in (None, "auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not port.isdigit() or not host:
        raise ValueError(f"address={address}: expected host:port (or ray://host:port)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as err:
        raise ValueError(f"address={address}: no Ray cluster answers there within "
                         f"{timeout:g} s ({err.strerror or err})") from None


def stop_process_group(proc, grace_s: float = 60.0) -> None:
    """Stop a process started in a session of its own (``mmrm serve`` and its Ray cluster):
    SIGTERM to it by its pid, then, if it has not exited within ``grace_s``, SIGKILL to its
    process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

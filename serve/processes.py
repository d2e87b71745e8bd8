"""Process plumbing the stack's children share: ports, process groups, dying with the parent."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterable

from quantserve.errors import UserError

log = logging.getLogger("quantserve.serve.processes")

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl  # resolved now: the child must not load libraries
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    # Runs in the child between fork and exec. If the owning process is SIGKILLed its cleanup never runs; the
    # kernel then sends the child SIGTERM (an engine's own workers follow their parent).
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def allocate_ports(host: str, start: int, count: int, taken: Iterable[int] = ()) -> list[int]:
    ports: list[int] = []
    skip = set(taken)
    port = start
    while len(ports) < count:
        if port > 65535:
            raise UserError(f"no free port for the engines from {start} upwards on {host}")
        if port not in skip and port_is_free(host, port):
            ports.append(port)
        port += 1
    return ports


def kill_group(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    """Signal a child's whole process group (each child leads its own session: vLLM forks workers)."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def terminate_group(proc: subprocess.Popen[bytes] | None, timeout_s: float, label: str) -> None:
    """SIGTERM, a grace period, then SIGKILL to whatever of the group is left, leader gone or not."""
    if proc is None:
        return
    if proc.poll() is None:
        kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0f s; killing its process group", label, timeout_s)
    kill_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)

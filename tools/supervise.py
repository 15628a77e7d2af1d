"""Starting, probing and stopping service processes (used by `make run` and the compose harness)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(address: str, service: str = "") -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                .status
            )
        except grpc.RpcError:
            return False
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(process: subprocess.Popen[bytes], address: str, *, timeout: float, label: str) -> None:
    deadline = time.monotonic() + timeout
    while not serving(address):
        if process.poll() is not None:
            raise RuntimeError(f"{label} exited with {process.returncode} before serving")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label} not SERVING on {address} after {timeout:.0f}s")
        time.sleep(0.1)


def terminate(processes: list[subprocess.Popen[bytes]], *, grace: float) -> list[int | None]:
    """SIGTERM all, then SIGKILL the process group of whatever outlives `grace`; returns exit codes."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    return [p.returncode for p in processes]

"""The compose healthcheck command: exit 0 only for a SERVING service."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT, Stack, free_port


def run_check(port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env |= {"LOYALTY_GRPC_PORT": str(port), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "services.common.healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serving_service_passes(stack: Stack) -> None:
    done = run_check(stack.services["metrics"].port)
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING")


def test_nothing_listening_fails(stack: Stack) -> None:
    done = run_check(free_port())
    assert done.returncode == 1
    assert "unhealthy" in done.stderr

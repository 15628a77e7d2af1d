"""`make run`'s stop signals: a signal at any moment of the wait loop stops it, never hangs it."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from tools.run_local import StopSignals


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {signo: signal.getsignal(signo) for signo in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signo, handler in saved.items():
        signal.signal(signo, handler)


def test_a_signal_at_any_moment_of_the_loop_stops_it(restore_handlers: None) -> None:
    """300 signals at random moments, each while the loop polls (the handler once deadlocked on Event's lock)."""
    rng = random.Random(20261203)
    for attempt in range(300):
        stop = StopSignals()
        stop.install()
        signo = rng.choice([signal.SIGINT, signal.SIGTERM])
        sender = threading.Timer(rng.uniform(0, 0.004), os.kill, (os.getpid(), signo))
        started = time.monotonic()
        sender.start()
        assert stop.wait(still_running=lambda: True, interval=0.001), attempt
        sender.join()
        assert stop.received == [signo]
        assert time.monotonic() - started < 5


def test_a_dead_service_ends_the_wait_without_a_signal(restore_handlers: None) -> None:
    stop = StopSignals()
    stop.install()
    checks = iter([True, True, False])
    assert stop.wait(still_running=lambda: next(checks), interval=0.001) is False
    assert stop.received == []

"""Background workers: a wake runs the next tick at once; stop ends the loop."""

from __future__ import annotations

import threading

from services.common.server import Worker


def test_a_woken_worker_ticks_again_without_waiting_for_its_interval() -> None:
    ticks: list[int] = []
    ticked = threading.Semaphore(0)

    def tick() -> None:
        ticks.append(len(ticks))
        ticked.release()

    worker = Worker("test", interval_seconds=3600.0, tick=tick)
    worker.start()
    try:
        assert ticked.acquire(timeout=30)  # the first tick runs at start
        worker.wake()
        assert ticked.acquire(timeout=30)  # an hour early: only the wake explains it
        assert ticks == [0, 1]
    finally:
        worker.stop(timeout=30)
    assert not worker.thread.is_alive()


def test_a_wake_during_a_tick_is_not_lost() -> None:
    entered = threading.Event()
    release = threading.Event()
    ticks: list[int] = []
    ticked = threading.Semaphore(0)

    def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            entered.set()
            release.wait(30)
        ticked.release()

    worker = Worker("test", interval_seconds=3600.0, tick=tick)
    worker.start()
    try:
        assert entered.wait(30)
        worker.wake()  # arrives while the first tick is still running
        release.set()
        assert ticked.acquire(timeout=30)
        assert ticked.acquire(timeout=30)
        assert ticks == [0, 1]
    finally:
        worker.stop(timeout=30)


def test_a_wake_runs_the_wake_action_and_the_interval_runs_the_tick() -> None:
    runs: list[str] = []
    ran = threading.Semaphore(0)

    def record(kind: str) -> None:
        runs.append(kind)
        ran.release()

    worker = Worker("test", interval_seconds=3600.0, tick=lambda: record("tick"), on_wake=lambda: record("wake"))
    worker.start()
    try:
        assert ran.acquire(timeout=30)
        worker.wake()
        assert ran.acquire(timeout=30)
        assert runs == ["tick", "wake"]
    finally:
        worker.stop(timeout=30)

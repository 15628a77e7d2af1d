"""The SQLite write queue hands the write lock on in arrival order, lets a caller give up, and nests."""

from __future__ import annotations

import threading
import time

from services.common.db import WriteQueue
from services.common.errors import DeadlineExceeded


def test_writers_get_their_turn_in_the_order_they_arrived() -> None:
    queue = WriteQueue()
    order: list[int] = []
    release = threading.Event()

    def writer(n: int) -> None:
        with queue.turn():
            order.append(n)
            if n == 0:
                release.wait(5)

    threads = []
    for n in range(12):
        threads.append(threading.Thread(target=writer, args=(n,)))
        threads[-1].start()
        time.sleep(0.05 if n == 0 else 0.02)  # the first holds the queue while the others line up one by one
    release.set()
    for thread in threads:
        thread.join(5)
    assert order == list(range(12))


def test_a_writer_whose_deadline_passes_gives_up_and_is_passed_over() -> None:
    queue = WriteQueue()
    holding, release, done = threading.Event(), threading.Event(), threading.Event()
    got: list[str] = []

    def holder() -> None:
        with queue.turn():
            holding.set()
            release.wait(5)

    def patient() -> None:
        with queue.turn():
            got.append("patient")
        done.set()

    threading.Thread(target=holder).start()
    holding.wait(5)
    impatient_failed: list[BaseException] = []

    def impatient() -> None:
        try:
            with queue.turn(timeout=0.05):
                got.append("impatient")
        except DeadlineExceeded as exc:
            impatient_failed.append(exc)

    first = threading.Thread(target=impatient)
    first.start()
    time.sleep(0.01)
    threading.Thread(target=patient).start()
    first.join(5)
    assert len(impatient_failed) == 1
    release.set()
    assert done.wait(5), "the writer behind one who gave up never got its turn"
    assert got == ["patient"]


def test_a_nested_turn_of_the_same_thread_does_not_wait_for_itself() -> None:
    queue = WriteQueue()
    with queue.turn(), queue.turn(timeout=0.01):
        pass
    with queue.turn(timeout=0.01):  # released in full
        pass


def test_a_timeout_of_zero_on_a_free_queue_still_gets_the_turn() -> None:
    queue = WriteQueue()
    with queue.turn(timeout=0):
        pass


def test_a_waiter_with_a_deadline_centuries_away_waits_instead_of_overflowing() -> None:
    """gRPC gives a call without a deadline a time left far past what a lock wait accepts."""
    queue = WriteQueue()
    holding, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    served = threading.Event()

    def holder() -> None:
        with queue.turn():
            holding.set()
            release.wait(5)

    def far_waiter() -> None:
        try:
            with queue.turn(timeout=1e12):
                served.set()
        except BaseException as exc:
            failures.append(exc)

    threading.Thread(target=holder).start()
    holding.wait(5)
    waiter = threading.Thread(target=far_waiter)
    waiter.start()
    time.sleep(0.05)
    release.set()
    waiter.join(5)
    assert failures == []
    assert served.is_set()


def test_a_waiter_that_fails_while_waiting_does_not_block_the_writers_behind() -> None:
    """Whatever ends a wait (here a failing wait itself), its ticket must not stall the queue."""
    queue = WriteQueue()
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with queue.turn():
            holding.set()
            release.wait(5)

    threading.Thread(target=holder).start()
    holding.wait(5)
    broken_wait = threading.Thread(target=lambda: _wait_with_a_failing_condition(queue))
    broken_wait.start()
    broken_wait.join(5)
    release.set()
    served = threading.Event()

    def behind() -> None:
        with queue.turn(timeout=5):
            served.set()

    threading.Thread(target=behind).start()
    assert served.wait(5), "the writer behind a failed wait never got its turn"


def _wait_with_a_failing_condition(queue: WriteQueue) -> None:
    real_wait = queue._turns.wait

    def failing_wait(timeout: float | None = None) -> bool:
        queue._turns.wait = real_wait  # type: ignore[method-assign]
        raise RuntimeError("the wait itself failed")

    queue._turns.wait = failing_wait  # type: ignore[method-assign]
    try:
        with queue.turn():
            pass
    except RuntimeError:
        pass

"""The watchdog that cuts off sends past their time limit: one thread, callbacks on time."""

from __future__ import annotations

import threading
import time

from connectors.transports.base import Watchdog


def test_an_armed_callback_runs_at_its_deadline_and_a_disarmed_one_never() -> None:
    dog = Watchdog()
    fired: list[str] = []
    done = threading.Event()
    start = time.monotonic()
    dog.arm(start + 0.3, lambda: (fired.append("late"), done.set()))
    dog.disarm(dog.arm(start + 0.1, lambda: fired.append("disarmed")))
    dog.arm(start + 0.2, lambda: fired.append("early"))

    assert done.wait(5)
    assert fired == ["early", "late"]  # in deadline order, the disarmed one left out
    assert time.monotonic() - start >= 0.3  # and not before its time


def test_a_sooner_deadline_wakes_the_watchdog_from_a_long_wait() -> None:
    dog = Watchdog()
    done = threading.Event()
    dog.arm(time.monotonic() + 3600, lambda: None)  # the watchdog now sleeps for an hour
    started = time.monotonic()
    dog.arm(time.monotonic() + 0.1, done.set)

    assert done.wait(5) and time.monotonic() - started < 1


def test_a_failing_callback_does_not_stop_the_watchdog() -> None:
    dog = Watchdog()
    done = threading.Event()
    dog.arm(time.monotonic(), lambda: 1 / 0)
    dog.arm(time.monotonic() + 0.05, done.set)

    assert done.wait(5)

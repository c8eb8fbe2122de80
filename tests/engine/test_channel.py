"""Channel / Completion: results cross from a producer OS thread to the consumer without lost wake-ups."""

from __future__ import annotations

import pytest

from engine.channel import Channel, Completion
from engine.native import start_thread


def test_items_arrive_in_order_then_the_error() -> None:
    channel: Channel[int] = Channel()

    def produce() -> None:
        for value in range(2000):
            channel.put(value)
        channel.close(RuntimeError("after the items"))

    start_thread(produce)
    received = []
    with pytest.raises(RuntimeError, match="after the items"):
        for value in channel:
            received.append(value)
    assert received == list(range(2000))


def test_a_ready_result_needs_no_waker() -> None:
    done: Completion[str] = Completion()
    done.set_result("ready")
    assert done.result() == "ready"
    assert done._channel._waker is None  # nothing was installed to wait with


def test_many_completions_across_threads() -> None:
    completions = [Completion[int]() for _ in range(300)]

    def produce() -> None:
        for index, completion in enumerate(completions):
            completion.set_result(index)

    start_thread(produce)
    assert [c.result() for c in completions] == list(range(300))


def test_only_the_first_outcome_counts() -> None:
    done: Completion[int] = Completion()
    done.set_error(ValueError("first"))
    done.set_result(2)
    with pytest.raises(ValueError, match="first"):
        done.result()

"""`make soak`'s short variant on the tiny models: ~450 mixed requests at 64 concurrency through the real plugin
process, with overload bursts and injected faults (bench/soak.py). Every request ends exactly once, every failure
is an error of the right class, busy errors come back quickly, heartbeats never stop for 2 s."""

from __future__ import annotations

from typing import Any

import pytest

from bench.soak import BUSY, TINY, UNAVAILABLE, Mix, SoakConfig, run_soak, summary


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    config = SoakConfig(
        models=TINY, requests=400, concurrency=64, timeout=60.0, mix=Mix.light(), first_mark=200, verbose=False
    )
    return run_soak(config)


def test_every_request_ends_exactly_once(report: dict[str, Any]) -> None:
    requests = report["requests"]
    assert requests["sent"] >= 400, summary(report)
    assert requests["lost"] == 0, summary(report)
    assert requests["duplicated"] == 0, report["duplicates"]
    assert requests["protocol_violations"] == 0, summary(report)
    assert requests["completed"] == requests["sent"], summary(report)
    assert report["plugin_alive_at_end"]
    assert report["stdout"]["non_protocol_lines"] == []


def test_every_failure_is_an_error_of_the_right_class(report: dict[str, Any]) -> None:
    assert report["requests"]["misclassed"] == 0, summary(report)
    assert report["requests"]["bad_results"] == 0, summary(report)
    by_kind = report["by_kind"]
    # the faults were really injected: overload refused, a batch failed, bad input refused, files changed
    assert by_kind["overload"]["outcomes"].get(BUSY, 0) > 0, by_kind["overload"]
    assert by_kind["oversize_call"]["outcomes"] == {"InvokeBadRequestError": by_kind["oversize_call"]["sent"]}
    assert by_kind["failing_batch"]["outcomes"] == {UNAVAILABLE: by_kind["failing_batch"]["sent"]}
    assert by_kind["lone_surrogate"]["outcomes"] == {"ok": by_kind["lone_surrogate"]["sent"]}
    assert by_kind["invalid_utf8"]["outcomes"] == {"ok": by_kind["invalid_utf8"]["sent"]}
    assert {"model_removed:dir_removed", "model_corrupted:corrupted", "model_removed:restored"} <= set(by_kind)
    assert by_kind["model_removed:restored"]["outcomes"] == {"ok": by_kind["model_removed:restored"]["sent"]}
    normal = ("documents", "query", "rerank", "chat", "num_tokens_embed", "num_tokens_llm")
    assert all(by_kind[kind]["outcomes"].get("ok", 0) > 0 for kind in normal), summary(report)


def test_busy_errors_come_back_quickly(report: dict[str, Any]) -> None:
    latency = report["busy_errors"]["latency_ms"]
    assert latency["n"] > 0
    assert latency["p99"] < 2000, latency


def test_heartbeats_never_stop_for_two_seconds(report: dict[str, Any]) -> None:
    heartbeats = report["heartbeats"]
    assert heartbeats["max_gap_s"] < 2.0, heartbeats

"""Metrics for Prometheus: the engine's own figures, read at scrape time and served over HTTP on a real OS thread.

Off unless the administrator sets `ONNX_LOCAL_METRICS_ADDR` (`HOST:PORT`). Every figure keeps one owner: the
collector reads `Engine.stats()` (each scheduler's statistics with their histogram buckets, queue, placement,
embedding cache), `Engine.requests` and the governor's placement when Prometheus scrapes, and keeps nothing
itself. Histograms therefore start again when a model is reloaded (Prometheus treats that as a counter reset);
request and error counts live on the engine and survive unloads.

The plugin process is monkey-patched by gevent, where `prometheus_client.start_http_server` would serve from a
greenlet on the hub. This server runs on a few OS threads (`engine.native.start_thread`) that share one listening
socket of the stdlib class gevent saved, each serving one connection at a time with a timeout: a scrape never
waits for the hub, the hub (which writes the protocol to stdout) never waits for a scrape, and a client that
stalls holds one thread only. Nothing here writes to stdout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine.api import Engine, existing_engine
from engine.errors import SettingError
from engine.native import NativeEvent, allocate_lock, start_thread, thread_ids

log = logging.getLogger(__name__)

METRICS_ENV = "ONNX_LOCAL_METRICS_ADDR"
ALLOWED = "HOST:PORT, such as 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464 (port 0: any free port, named in the log)"
# A client that sends nothing (or reads nothing) for this long is dropped.
CONNECTION_TIMEOUT_S = 10.0
# Threads accepting connections: a stalled client holds one of them, the others serve scrapes meanwhile.
SERVER_THREADS = 4
STAGES = ("queue_wait", "tokenize", "inference", "post")
MODEL = ("model", "type")

ErrorClassifier = Callable[[type[BaseException]], str]


def parse_address(raw: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` or `[IPv6]:PORT`; SettingError naming the variable otherwise."""
    host, separator, port_text = raw.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs brackets
    if not separator or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise SettingError(METRICS_ENV, raw, ALLOWED)
    return host, int(port_text)


class EngineCollector(Collector):
    """Reads the engine's figures at each scrape (nothing when the engine was not created yet)."""

    def __init__(self, engine: Callable[[], Engine | None], error_class: ErrorClassifier | None = None) -> None:
        self._engine = engine
        self._error_class = error_class or (lambda error: "")

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        families = _Families()
        families.gauge("process_threads", "OS threads of the plugin process", ()).add_metric([], len(thread_ids()))
        loaded = families.gauge("loaded_models", "Loaded model instances", ())
        if engine is None:
            loaded.add_metric([], 0)
            return iter(families)
        stats = engine.stats()
        loaded.add_metric([], len(stats))
        for name, snapshot in stats.items():
            _model_figures(families, name, snapshot)
        self._request_figures(families, engine.requests.snapshot())
        placement = engine.placement()
        families.counter(
            "core_replacements", "Times the placement governor moved models to other cores", ()
        ).add_metric([], float(placement.get("replacements", 0)))  # type: ignore[arg-type]
        budget = engine.registry.budget
        families.gauge(
            "memory_budget_bytes", "Memory the loaded models may use (ONNX_LOCAL_MEMORY_BUDGET_MB)", ()
        ).add_metric([], budget.budget_bytes)
        families.gauge("max_models", "Loaded instances allowed at once (ONNX_LOCAL_MAX_MODELS)", ()).add_metric(
            [], budget.max_models
        )
        return iter(families)

    def _request_figures(self, families: _Families, counts: dict[str, Any]) -> None:
        requests = families.counter("requests", "Embedding, rerank and generation calls, per model", MODEL)
        errors = families.counter(
            "request_errors",
            "Calls that ended in an error: the engine's error class and the Dify error it becomes",
            (*MODEL, "error", "dify_error"),
        )
        for row in counts["models"]:
            requests.add_metric([row["model"], row["type"]], row["requests"])
            for error_class, count in row["errors"].items():
                labels = [row["model"], row["type"], error_class.__name__, self._error_class(error_class)]
                errors.add_metric(labels, count)
        families.counter(
            "rate_limited", "Calls refused by the per-user rate limit (ONNX_LOCAL_RATE_LIMIT)", ()
        ).add_metric([], counts["rate_limited"])


class _Families:
    """Metric families by name, created on first use, every name prefixed `onnx_local_`."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())

    def _get(self, kind: type[Metric], name: str, documentation: str, labels: tuple[str, ...]) -> Any:
        full = f"onnx_local_{name}"
        if full not in self._families:
            self._families[full] = kind(full, documentation, labels=labels)
        return self._families[full]

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
        return self._get(GaugeMetricFamily, name, documentation, labels)

    def counter(self, name: str, documentation: str, labels: tuple[str, ...]) -> CounterMetricFamily:
        return self._get(CounterMetricFamily, name, documentation, labels)

    def histogram(
        self, name: str, documentation: str, labels: tuple[str, ...], values: list[str], figures: Any, scale: float
    ) -> None:
        """One histogram series from a `RunningStat.histogram()` (bounds and sum multiplied by `scale`)."""
        if not isinstance(figures, dict):
            return
        family: HistogramMetricFamily = self._get(HistogramMetricFamily, name, documentation, labels)
        bounds = [floatToGoString(bound * scale) for bound in figures["bounds"]]
        buckets = list(zip([*bounds, "+Inf"], figures["cumulative"]))
        family.add_metric(values, buckets, sum_value=figures["sum"] * scale)


def _model_figures(families: _Families, name: str, snapshot: dict[str, Any]) -> None:
    model = snapshot.get("model", {})
    labels = [name, model.get("type", "")]
    families.gauge(
        "model_info", "What a loaded instance is: its ONNX file and layout", (*MODEL, "file", "layout")
    ).add_metric([*labels, model.get("file", ""), model.get("layout", "")], 1)
    families.gauge("model_file_bytes", "Size of the loaded ONNX file", MODEL).add_metric(
        labels, model.get("size_bytes", 0)
    )
    families.gauge("model_load_seconds", "How long the instance took to load", MODEL).add_metric(
        labels, model.get("load_seconds", 0.0)
    )
    families.gauge("model_load_memory_bytes", "Resident memory the load added", MODEL).add_metric(
        labels, float(model.get("rss_delta_mb", 0.0)) * 1e6
    )
    placement = snapshot.get("placement", {})
    families.gauge("model_cores", "Cores the instance computes on now (0: unpinned)", MODEL).add_metric(
        labels, len(placement.get("cores", ()))
    )
    families.gauge("model_threads", "Threads the instance computes with", MODEL).add_metric(
        labels, placement.get("threads", 0)
    )
    families.gauge("model_busy", "1 while the governor counts the instance busy", MODEL).add_metric(
        labels, 1 if placement.get("busy") else 0
    )
    queue = snapshot.get("queue", {})
    families.gauge("calls_in_progress", "Calls holding the instance now (queued or computing)", MODEL).add_metric(
        labels, queue.get("active_calls", 0)
    )
    histograms = snapshot.get("histograms", {})
    generation = snapshot.get("generation")
    if isinstance(generation, dict):
        _generation_figures(families, labels, generation, histograms, queue)
        _reuse_figures(families, labels, snapshot.get("prefix_cache", {}), snapshot.get("speculative", {}))
    else:
        _encoder_figures(families, labels, snapshot, histograms, queue)


def _encoder_figures(
    families: _Families, labels: list[str], snapshot: dict[str, Any], histograms: dict[str, Any], queue: dict[str, Any]
) -> None:
    families.gauge("queued_inputs", "Texts (or pairs) accepted and not yet in a batch", MODEL).add_metric(
        labels, queue.get("queued_inputs", 0)
    )
    for stage in STAGES:
        families.histogram(
            "stage_seconds",
            "Time per stage: queue_wait and post per text, tokenize per call, inference per batch",
            (*MODEL, "stage"),
            [*labels, stage],
            histograms.get(f"{stage}_ms"),
            1e-3,
        )
    families.histogram("batch_size", "Inputs per batch run", MODEL, labels, histograms.get("batch_size"), 1.0)
    families.histogram(
        "batch_padded_tokens",
        "Tokens per batch run, padding included",
        MODEL,
        labels,
        histograms.get("padded_tokens"),
        1.0,
    )
    families.histogram(
        "batch_padding_ratio",
        "Padded tokens over real tokens per batch run (1: no padding)",
        MODEL,
        labels,
        histograms.get("padding_ratio"),
        1.0,
    )
    families.counter("busy_rejections", "Calls refused as busy (queue_limit or waiting requests)", MODEL).add_metric(
        labels, snapshot.get("rejected_calls", 0)
    )
    families.counter("failed_batches", "Batch runs ONNX Runtime failed", MODEL).add_metric(
        labels, snapshot.get("failed_batches", 0)
    )
    cache = snapshot.get("cache")
    if isinstance(cache, dict):  # an embedding model with its cache on
        for key, documentation in (
            ("hits", "Texts served from the embedding cache"),
            ("misses", "Texts looked up in the embedding cache and computed"),
            ("saved_tokens", "Tokens the embedding cache's hits did not compute"),
        ):
            if key in cache:
                families.counter(f"embedding_cache_{key}", documentation, MODEL).add_metric(labels, cache[key])
        for key, documentation in (
            ("entries", "Vectors in the embedding cache"),
            ("bytes", "Memory the embedding cache holds"),
            ("budget_bytes", "Memory the embedding cache may hold (embedding_cache_mb)"),
        ):
            if key in cache:
                families.gauge(f"embedding_cache_{key}", documentation, MODEL).add_metric(labels, cache[key])


def _reuse_figures(families: _Families, labels: list[str], prefix: dict[str, Any], speculative: dict[str, Any]) -> None:
    """Work a decoder did not redo: prompt KV copied from the prefix cache, draft tokens accepted."""
    for name, key, documentation in (
        ("prefix_cache_lookups", "lookups", "Generations that looked for a cached prompt prefix"),
        ("prefix_cache_hits", "hits", "Generations that reused a cached prompt prefix"),
        ("prefix_cache_reused_tokens", "reused_tokens", "Prompt tokens whose KV was copied instead of computed"),
        ("prefix_cache_evictions", "evictions", "Prefix cache entries evicted to stay within prefix_cache_mb"),
    ):
        families.counter(name, documentation, MODEL).add_metric(labels, prefix.get(key, 0))
    families.gauge("prefix_cache_bytes", "Memory held by the prefix cache", MODEL).add_metric(
        labels, prefix.get("bytes", 0)
    )
    for name, key, documentation in (
        ("speculative_runs", "runs", "Verification runs of speculative drafts"),
        ("speculative_proposed_tokens", "proposed", "Draft tokens proposed"),
        ("speculative_accepted_tokens", "accepted", "Draft tokens accepted"),
    ):
        families.counter(name, documentation, MODEL).add_metric(labels, speculative.get(key, 0))


def _generation_figures(
    families: _Families,
    labels: list[str],
    generation: dict[str, Any],
    histograms: dict[str, Any],
    queue: dict[str, Any],
) -> None:
    families.gauge("waiting_requests", "Generation requests waiting for a free sequence", MODEL).add_metric(
        labels, queue.get("waiting_requests", 0)
    )
    families.gauge("active_sequences", "Sequences being generated now", MODEL).add_metric(
        labels, queue.get("active_sequences", 0)
    )
    families.histogram(
        "time_to_first_token_seconds",
        "From submission to the first generated token (queue wait and prefill)",
        MODEL,
        labels,
        histograms.get("ttft_ms"),
        1e-3,
    )
    families.histogram(
        "decode_tokens_per_second",
        "Decode speed of a finished generation (tokens after the first, per second)",
        MODEL,
        labels,
        histograms.get("decode_tokens_per_s"),
        1.0,
    )
    families.histogram(
        "prompt_tokens", "Prompt tokens per generation", MODEL, labels, histograms.get("prompt_tokens"), 1.0
    )
    families.histogram(
        "completion_tokens", "Generated tokens per generation", MODEL, labels, histograms.get("completion_tokens"), 1.0
    )
    finished = families.counter("generations_finished", "Finished generations by finish reason", (*MODEL, "reason"))
    for reason, count in generation.get("finish_reasons", {}).items():
        finished.add_metric([*labels, reason], count)
    families.counter("busy_rejections", "Calls refused as busy (queue_limit or waiting requests)", MODEL).add_metric(
        labels, generation.get("rejected_calls", 0)
    )


def metrics_registry(
    engine: Callable[[], Engine | None] = existing_engine, error_class: ErrorClassifier | None = None
) -> CollectorRegistry:
    """The engine's collector and the process's (RSS, CPU, open files, Python GC)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, error_class))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _stdlib_socket() -> type[socket.socket]:
    """The socket class before gevent's monkey-patching (a blocking OS-level socket for an OS thread)."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("socket"):
        return gevent_monkey.get_original("socket", "socket")
    return socket.socket


class _OneAtATime:
    """A registry collected by one thread at a time (under a native lock): prometheus_client's registry lock is
    a gevent lock once the process is patched, so the server's threads must never contend for it."""

    def __init__(self, registry: Any, lock: Any) -> None:
        self._registry = registry
        self._lock = lock

    def collect(self) -> list[Metric]:
        with self._lock:
            return list(self._registry.collect())

    def restricted_registry(self, names: Any) -> _OneAtATime:
        return _OneAtATime(self._registry.restricted_registry(names), self._lock)


class MetricsServer:
    """Serves a registry's metrics over HTTP (any path; `name[]` filters, gzip and OpenMetrics when asked) on
    OS threads of its own."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self._socket_class = _stdlib_socket()
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = self._socket_class(self._family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(16)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.host = host
        self.port: int = listener.getsockname()[1]
        serialized = _OneAtATime(registry, allocate_lock())
        self._handler = type("Handler", (MetricsHandler,), {"registry": serialized, "timeout": CONNECTION_TIMEOUT_S})
        self._closed = False
        self._pause = NativeEvent()
        for _ in range(SERVER_THREADS):
            start_thread(self._serve)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._closed = True
        self._pause.set()
        with contextlib.suppress(OSError):  # not connected: nothing to wake
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept on the server's thread
        self._listener.close()

    def _serve(self) -> None:
        while not self._closed:
            try:
                # _accept, not accept: the latter wraps the connection in the socket module's (patched) class.
                fd, peer = self._listener._accept()  # type: ignore[attr-defined]
            except OSError as error:
                if self._closed:
                    return
                log.warning("metrics endpoint: accept failed: %s", error)
                self._pause.wait(0.5)  # e.g. out of file descriptors: do not spin
                continue
            connection = self._socket_class(self._family, socket.SOCK_STREAM, 0, fileno=fd)
            try:
                self._handler(connection, peer, self)
            except Exception as error:  # a client that went away mid-response, a collector bug: keep serving
                log.warning("metrics endpoint: a scrape failed: %s: %s", type(error).__name__, error)
            finally:
                connection.close()


def start_metrics_server(
    address: str, engine: Callable[[], Engine | None] = existing_engine, error_class: ErrorClassifier | None = None
) -> MetricsServer:
    """Serve the engine's metrics at `address` (`HOST:PORT`); SettingError or OSError when it cannot."""
    host, port = parse_address(address)
    return MetricsServer(host, port, metrics_registry(engine, error_class))


def start_from_environment(
    engine: Callable[[], Engine | None] = existing_engine, error_class: ErrorClassifier | None = None
) -> MetricsServer | None:
    """The metrics endpoint the administrator asked for in ONNX_LOCAL_METRICS_ADDR, or None (not set, or it
    could not be served: an error in the log says why, and the plugin serves on without metrics)."""
    raw = os.environ.get(METRICS_ENV, "").strip()
    if not raw:
        return None
    try:
        server = start_metrics_server(raw, engine, error_class)
    except SettingError as error:
        log.error("metrics for Prometheus are off: %s", error)
        return None
    except OSError as error:
        log.error("metrics for Prometheus are off: %s=%s cannot be served: %s", METRICS_ENV, raw, error)
        return None
    log.info("metrics for Prometheus at %s", server.url)
    return server

"""Prometheus metrics of one server, with ``prometheus_client`` (one registry per server, so
several servers in one process never share counters)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

#: Histogram buckets (ms) of every latency histogram.
BUCKETS_MS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000,
              2500, 10000)  # fmt: skip
#: Kinds of the selector's own decision counts (``Selector.counts``), always exported.
SELECTOR_KINDS = ("learned", "shield", "invalid", "no_model", "inference_error", "internal_error")
#: Content type of the ``/metrics`` answer.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Live(Collector):
    """Counters and gauges read from the server's state at scrape time."""

    def __init__(
        self,
        counters: Callable[[], Mapping[str, tuple[str, str, Mapping[str, float]]]],
        gauges: Callable[[], Mapping[str, tuple[str, float]]],
    ) -> None:
        self._counters = counters
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for name, (text, label, values) in self._counters().items():
            fam = CounterMetricFamily(name, text, labels=[label] if label else None)
            for key, v in values.items():
                fam.add_metric([key] if label else [], float(v))
            yield fam
        for name, (text, value) in self._gauges().items():
            yield GaugeMetricFamily(name, text, value=float(value))

    def describe(self) -> Iterable[Metric]:
        return []


class ServingMetrics:
    """Every metric of the server (request counts, decisions, fallbacks, timings, the decision
    log's health, the process's memory) in one :class:`CollectorRegistry`.

    Args:
        counters: called at each scrape: ``{name: (help, label, {label value: count})}`` for
            counts kept elsewhere (the selector's decision kinds, the decision log's writes).
        gauges: called at each scrape: ``{name: (help, value)}``.
    """

    def __init__(
        self,
        counters: Callable[[], Mapping[str, tuple[str, str, Mapping[str, float]]]],
        gauges: Callable[[], Mapping[str, tuple[str, float]]],
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("modi_requests", "Inference requests by HTTP status", ["code"],
                                registry=r)  # fmt: skip
        self.decisions = Counter(
            "modi_decisions", "Served decisions per model and source", ["model", "source"],
            registry=r,
        )  # fmt: skip
        self.fallbacks = Counter("modi_fallbacks", "ModiPick fallbacks by cause", ["cause"],
                                 registry=r)  # fmt: skip
        self.explored = Counter(
            "modi_explored", "Decisions where exploration served another model than the greedy "
            "choice", registry=r,
        )  # fmt: skip
        self.reloads = Counter("modi_reloads", "Admin selector reloads by result", ["result"],
                               registry=r)  # fmt: skip
        self.refused_images = Counter(
            "modi_images_refused", "Image bodies refused before or while decoding, by reason",
            ["reason"], registry=r,
        )  # fmt: skip
        self.body_timeouts = Counter(
            "modi_body_timeouts", "Requests whose body did not arrive within the deadline",
            registry=r,
        )  # fmt: skip
        self.shadow = Counter(
            "modi_shadow_decisions", "Shadow (challenger) decisions, by agreement with the "
            "served model", ["agree"], registry=r,
        )  # fmt: skip

        self.shadow_batches = Counter(
            "modi_shadow_batches", "Batches of logged decisions the shadow decided at once",
            registry=r,
        )  # fmt: skip

        def hist(name: str, text: str, labels: tuple[str, ...] = ()) -> Histogram:
            return Histogram(name, text, list(labels), buckets=BUCKETS_MS, registry=r)

        self.select_ms = hist("modi_select_ms", "Decision time: features, selector, "
                              "probabilities (ms)")  # fmt: skip
        self.queue_ms = hist("modi_queue_ms", "Wait for an execution slot (ms)")
        self.decode_ms = hist("modi_decode_ms", "Image decoding time (ms)")
        self.preprocess_ms = hist("modi_preprocess_ms", "Decode and preprocessing time (ms)")
        self.exec_ms = hist("modi_exec_ms", "Model execution time per model (ms)", ("model",))
        self.server_ms = hist("modi_server_ms", "Arrival to response in the server (ms)")
        self.shadow_ms = hist("modi_shadow_ms", "Shadow selector time per decision, one "
                              "observation per batch, off the request path (ms)")  # fmt: skip
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        r.register(_Live(counters, gauges))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

"""Prometheus metrics on a per-application registry (several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class _CallbackGauge(Collector):
    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._name, self._doc, self._read = name, doc, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, self._doc, value=self._read())


class _CallbackCounter(Collector):
    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._name, self._doc, self._read = name, doc, read

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._doc, value=self._read())


class _CallbackLabelledCounter(Collector):
    def __init__(self, name: str, doc: str, label: str, read: Callable[[], dict[str, int]]) -> None:
        self._name, self._doc, self._label, self._read = name, doc, label, read

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for value, count in self._read().items():
            family.add_metric([value], count)
        yield family


class Metrics:
    """The service's metrics; gauges that read live state are registered later."""

    def __init__(self) -> None:
        """Create the registry and the request metrics."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "visiona_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "visiona_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # Route templates and statuses are bounded sets, so this cache is too.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.session_store_errors = Counter(
            "visiona_session_store_errors_total",
            "Failed calls to the web-session store.",
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency (children cached: no label lookup per call)."""
        key = (method, route, status)
        child = self._request_children.get(key)
        if child is None:
            child = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._request_children[key] = child
        child[0].inc()
        child[1].observe(seconds)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Register a gauge whose value is read at scrape time."""
        self.registry.register(_CallbackGauge(name, doc, read))

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Register a counter (``name`` without ``_total``) whose value is read at scrape time."""
        self.registry.register(_CallbackCounter(name, doc, read))

    def labelled_counter(
        self, name: str, doc: str, label: str, read: Callable[[], dict[str, int]]
    ) -> None:
        """Register a counter with one label, its values read at scrape time (label → count)."""
        self.registry.register(_CallbackLabelledCounter(name, doc, label, read))

    def new_gauge(self, name: str, doc: str) -> Gauge:
        """Register and return a plain gauge."""
        return Gauge(name, doc, registry=self.registry)

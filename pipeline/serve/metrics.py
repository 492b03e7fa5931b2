"""Prometheus metrics of one server (its own registry: two apps in a process, as in the
tests, never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Latency buckets (s): a cached-text search is ~ms, a video upload decode ~seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "vidcat_http_request_seconds",
            "HTTP request latency by route template, method and status code",
            ("route", "method", "status"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "vidcat_http_errors_total",
            "HTTP responses with a 4xx/5xx status, by route template and status code",
            ("route", "status"),
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "vidcat_model_seconds",
            "Model work per request (text, video, image embedding; re-ranking)",
            ("kind",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.search_seconds = Histogram(
            "vidcat_search_seconds",
            "Table searches (vector, hybrid, similar) per request",
            ("kind",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "vidcat_model_queue_depth",
            "Model jobs running or waiting",
            registry=self.registry,
        )
        self.rejected = Counter(
            "vidcat_model_rejected_total",
            "Model jobs refused because the queue was full (429) or timed out (503)",
            ("reason",),
            registry=self.registry,
        )
        self.text_cache_hits = Counter(
            "vidcat_text_cache_hits_total",
            "Text queries whose embedding came from the cache",
            registry=self.registry,
        )

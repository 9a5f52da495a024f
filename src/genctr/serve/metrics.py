"""The service's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from genctr.serve.workers import METRICS_DIR_ENV

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = tuple(2.0 ** k for k in range(13))  # 1 .. 4096 rows


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("genctr_requests", "Requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("genctr_request_errors", "Requests answered with a 4xx or 5xx",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("genctr_request_latency_seconds", "POST /predict wall time",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("genctr_batch_rows", "Rows per forward pass (micro-batch)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("genctr_batch_seconds", "Time to encode and score one "
                                       "micro-batch, by inference strategy", ["inference"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rows = Counter("genctr_rows_scored", "Rows scored", registry=self.registry)
        self.unseen = Counter("genctr_unseen_values", "Values never seen in training (scored as "
                              "out-of-vocabulary), by field", ["field"], registry=self.registry)
        self.gc_pause = Histogram("genctr_gc_pause_seconds", "Pauses of Python's cyclic garbage "
                                  "collector (every thread stops), by generation", ["generation"],
                                  buckets=LATENCY_BUCKETS, registry=self.registry)

    def answered(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()

    def watch_gc(self) -> Callable[[], None]:
        """Time every collection into `gc_pause` from now on; returns the function that stops it.
        A full collection stops every thread, so its pause lands on the requests in flight."""
        started: list[float] = [0.0]

        def observe(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self.gc_pause.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

        gc.callbacks.append(observe)
        return lambda: gc.callbacks.remove(observe)

    def text(self) -> bytes:
        """This process's metrics; a worker of `serve --workers` gives every worker's, summed
        (prometheus_client's multiprocess mode: each process writes its values to a file in
        the folder the environment names)."""
        if os.environ.get(METRICS_DIR_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

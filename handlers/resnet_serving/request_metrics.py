"""Prometheus metrics per model, from the handler: requests by outcome and their latency.

TorchServe counts requests and times batches, but cannot tell a request this handler refused
(a 4xx inside a successful batch) from one it answered. So each request is counted here with its
outcome (``answered`` or the refusal's type, e.g. ``TruncatedImage``), and its time in the
handler goes into a histogram. TorchServe exports both on its metrics address when the server
runs with ``model_metrics_auto_detect=true`` (config.properties), as
``ResnetMarRequests{ModelName, Level, Outcome}`` and ``ResnetMarRequestSeconds{ModelName, Level}``.

Metrics never fail a request: without TorchServe's metrics API (tests, another server) or if it
raises, they are skipped and the failure is logged once.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

REQUESTS = "ResnetMarRequests"
LATENCY = "ResnetMarRequestSeconds"
ANSWERED = "answered"


class RequestMetrics:
    """Records one request's outcome and time, for one model. What does not change between
    requests (TorchServe's metric types, the model's dimensions) is looked up once."""

    def __init__(self, context: Any) -> None:
        self._metrics = getattr(context, "metrics", None)
        self._failed = False
        try:
            from ts.metrics.dimension import Dimension
            from ts.metrics.metric_type_enum import MetricTypes
        except ImportError:
            self._metrics = None
            return
        model = getattr(context, "model_name", None) or "unknown"
        self._dimension = Dimension
        self._histogram = MetricTypes.HISTOGRAM
        self._model = [Dimension("ModelName", model), Dimension("Level", "Model")]

    def record(self, outcome: str, seconds: float) -> None:
        if self._metrics is None or self._failed:
            return
        try:
            outcome_dimension = self._dimension("Outcome", outcome)
            self._metrics.add_counter(REQUESTS, 1, None, [*self._model, outcome_dimension])
            model = list(self._model)  # TorchServe may append default dimensions in place
            self._metrics.add_metric(LATENCY, seconds, "s", None, model, self._histogram)
        except Exception:
            self._failed = True
            logger.exception("request metrics disabled: TorchServe's metrics API failed")

"""Prometheus metrics, served on METRICS_HOST (127.0.0.1 by default) when METRICS_PORT is set: jobs by state, API
latency and errors, ticks, queue, credits, callbacks."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Gauge("kling_bot_jobs", "Jobs by state", ["state"])
QUEUE = Gauge("kling_bot_queue_length", "Jobs waiting in the bot's queue")
CREDITS_USED = Gauge("kling_bot_credits_used", "Credits used this period, by server", ["guild"])
API_SECONDS = Histogram(
    "kling_bot_api_seconds", "Kling API call latency", ["call"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
)
API_ERRORS = Counter("kling_bot_api_errors_total", "Kling API failures by code (or HTTP status)", ["code"])
POLL_TICK_SECONDS = Histogram(
    "kling_bot_poll_tick_seconds", "Duration of one poll tick", buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30)
)
CALLBACKS = Counter(
    "kling_bot_callbacks_total", "Provider callbacks received, by outcome (hint, rate_limited, bad_signature, bad_id)",
    ["outcome"],
)  # fmt: skip
CALLBACKS_DROPPED = Counter(
    "kling_bot_callbacks_dropped_total", "Callbacks' hints dropped because too many were waiting (a flood)"
)

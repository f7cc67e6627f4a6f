"""`JobService`: validate, reserve, submit, poll and settle video jobs. Plain data in and out; no Discord.

It is its parts combined, each a class over `JobBase` (bot/core/job_base.py) in a module of its own: `Intake`
(bot/core/intake.py), `Dispatch` (bot/core/dispatch.py), `Polling` (bot/core/polling.py), `DeliveryBook`
(bot/core/delivery_book.py) and `JobReads` (bot/core/job_reads.py). The names the callers import live on here."""

from __future__ import annotations

from bot.core.delivery_book import DeliveryBook
from bot.core.dispatch import Dispatch
from bot.core.intake import ASPECT_RATIOS, DURATIONS, MAX_PROMPT, RESOLUTIONS, Intake
from bot.core.job_base import (
    LATE_LIMIT_SECONDS,
    LEASE_SECONDS,
    POLL_BATCH,
    RESERVED_GRACE_LEASES,
    SUBMIT_LOOKUP_SECONDS,
    InvalidRequest,
    JobChange,
    JobRequest,
    ServiceUnavailable,
    SubmitRefused,
    explain,
)
from bot.core.job_reads import MAX_CHAIN, JobReads
from bot.core.polling import MAX_SUBMIT_ATTEMPTS, Polling

__all__ = [
    "ASPECT_RATIOS",
    "DURATIONS",
    "LATE_LIMIT_SECONDS",
    "LEASE_SECONDS",
    "MAX_CHAIN",
    "MAX_PROMPT",
    "MAX_SUBMIT_ATTEMPTS",
    "POLL_BATCH",
    "RESERVED_GRACE_LEASES",
    "RESOLUTIONS",
    "SUBMIT_LOOKUP_SECONDS",
    "InvalidRequest",
    "JobChange",
    "JobRequest",
    "JobService",
    "ServiceUnavailable",
    "SubmitRefused",
    "explain",
]


class JobService(Intake, Dispatch, Polling, DeliveryBook, JobReads):
    """The job state machine over the store and the API client: its parts combined over one shared state."""

"""What the job service's part tests share: a paid service with room for two jobs at the provider at once."""

from __future__ import annotations

import pytest

from bot.core.credits import CreditService
from bot.core.jobs import JobRequest, JobService
from bot.core.model import QuotaSettings
from bot.provider.kling import KlingClient
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import FakeClock

GUILD = 1
ROOMY = QuotaSettings(default_limit=1_000_000, period="total", member_in_flight=50, server_in_flight=50)


@pytest.fixture
def credits(store: Store, clock: FakeClock) -> CreditService:
    return CreditService(store, ROOMY, clock=clock)


@pytest.fixture
def narrow(store: Store, kling: KlingClient, clock: FakeClock, credits: CreditService) -> JobService:
    return JobService(store, kling, credits=credits, clock=clock, provider_concurrency=2)


def video(user: int, prompt: str = "clip") -> JobRequest:
    return JobRequest("text", prompt, guild_id=GUILD, user_id=user, channel_id=5)


def posts(sim: KlingSimulator) -> int:
    return sum(1 for r in sim.requests if r.method == "POST")

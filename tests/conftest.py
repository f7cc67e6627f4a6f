"""Shared fixtures: the Kling simulator on 127.0.0.1, a real SQLite file, the real client and service."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from pydantic import SecretStr

from bot.core.jobs import JobService
from bot.provider.kling import KlingClient
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store

API_KEY = "sk-test-0123456789abcdef"

# The bot processes, benches and fakes the tests start run this checkout's code, whatever the installed package
# points at (a second worktree, or the mutants' copies of the tree).
ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


class FakeClock:
    """Wall-clock seconds under the test's control."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordedSleeps:
    """Stands in for asyncio.sleep in the client: records each back-off instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def sim() -> AsyncIterator[KlingSimulator]:
    simulator = KlingSimulator(api_key=API_KEY, endpoint_path="acct-endpoint", render_seconds=0.0)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


@pytest.fixture
def kling(sim: KlingSimulator, session: aiohttp.ClientSession, sleeps: RecordedSleeps) -> KlingClient:
    return KlingClient(
        session,
        root_url=f"{sim.base_url()}/acct-endpoint",
        api_key=SecretStr(API_KEY),
        timeout=2.0,
        max_retries=3,
        sleep=sleeps,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "bot.sqlite3")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(store: Store, kling: KlingClient, clock: FakeClock) -> JobService:
    return JobService(store, kling, job_timeout=30 * 60, clock=clock, provider_concurrency=100)


def make_image(width: int, height: int, fmt: str = "PNG", **save: object) -> bytes:
    """A real image file of the given size and format."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(out, fmt, **save)
    return out.getvalue()


@pytest.fixture
def png_frame() -> bytes:
    return make_image(640, 360)

"""Sound: `settings.audio` as chosen (absent when not chosen), the server's default, the rate with sound, and a
gateway that refuses the field: the job sent again without it, once, charged as silent, and remembered."""

from __future__ import annotations

from typing import Any

import pytest

from bot.core.credits import CreditService
from bot.core.jobs import JobRequest, JobService, SubmitRefused
from bot.provider.kling import KlingClient
from bot.provider.sim_variant import GatewayVariant
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import FakeClock
from tests.core.conftest import GUILD, ROOMY

# 720p costs 0.8 a second silent, 1.2 with sound (as resellers charge about 1.5x for it).
RATES = {"720p": 800, "1080p": 1000, "720p+sound": 1200, "1080p+sound": 1500}


@pytest.fixture
def paid(store: Store, kling: KlingClient, clock: FakeClock) -> JobService:
    credits = CreditService(store, ROOMY, rates=RATES, clock=clock)
    return JobService(store, kling, credits=credits, rates=RATES, clock=clock, provider_concurrency=50)


def ask(sound: str | None = None, prompt: str = "a fox in the rain", **extra: Any) -> JobRequest:
    return JobRequest("text", prompt, sound=sound, guild_id=GUILD, user_id=7, channel_id=5, **extra)


def bodies(sim: KlingSimulator) -> list[dict[str, Any]]:
    return [r.json for r in sim.requests if r.method == "POST"]


@pytest.mark.parametrize(("sound", "sent"), [("on", "native"), ("off", "off"), (None, None)])
async def test_the_body_carries_settings_audio_as_chosen_and_nothing_when_not_chosen(
    sim: KlingSimulator, paid: JobService, sound: str | None, sent: str | None
) -> None:
    job = await paid.create(ask(sound))
    [body] = bodies(sim)
    assert body["settings"].get("audio") == sent
    assert ("audio" in body["settings"]) == (sound is not None)
    assert job.sound == sound and not job.sound_dropped
    [task] = sim.tasks_for(job.id)
    assert task.sound == (sound != "off")  # turbo's default is sound


async def test_the_servers_default_stands_when_the_member_does_not_choose(
    sim: KlingSimulator, paid: JobService
) -> None:
    assert paid.credits is not None
    entry = await paid.credits.set_sound_default(GUILD, 99, "off")
    assert (entry.action, entry.before, entry.after) == ("sound", "provider", "off")
    unchosen = await paid.create(ask())
    chosen = await paid.create(ask("on", prompt="a fox that howls"))
    await paid.credits.set_sound_default(GUILD, 99, None)
    provider = await paid.create(ask(prompt="a quiet fox"))
    assert [b["settings"].get("audio", "absent") for b in bodies(sim)] == ["off", "native", "absent"]
    assert (unchosen.sound, chosen.sound, provider.sound) == ("off", "on", None)
    audits = await paid.credits.audit_entries(GUILD)
    assert [(e.before, e.after) for e in audits] == [("off", "provider"), ("provider", "off")]


async def test_sound_costs_its_own_rate_and_not_chosen_costs_as_with_sound(
    sim: KlingSimulator, paid: JobService
) -> None:
    jobs = [await paid.create(ask(sound, prompt=f"fox {n}")) for n, sound in enumerate(("on", "off", None))]
    assert [job.cost_estimate for job in jobs] == [5 * 1200, 5 * 800, 5 * 1200]
    assert await paid.request_cost(ask("off")) == 4000 and paid.cost_of(5, "720p", "on") == 6000
    # The settlement stays the billed amount, whatever was reserved.
    sim.finish()
    await paid.poll_once()
    settled = [await paid.get(job.id) for job in jobs]
    assert [job.cost_billed for job in settled if job] == [4000, 4000, 4000]


@pytest.mark.parametrize("refusal", ["refuse", "refuse_unnamed"])
async def test_a_gateway_refusing_audio_gets_the_job_once_more_without_it_and_charges_it_as_silent(
    sim: KlingSimulator, paid: JobService, kling: KlingClient, refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim.variant = GatewayVariant(audio=refusal)  # type: ignore[arg-type]
    job = await paid.create(ask("on"))
    first, again = bodies(sim)
    assert first["settings"]["audio"] == "native" and "audio" not in again["settings"]
    assert first["options"]["external_task_id"] == again["options"]["external_task_id"] == job.id
    assert len(sim.tasks_for(job.id)) == 1 and len(sim.tasks) == 1  # the refusal made no task: no double submit
    assert job.status == "submitted" and job.sound == "on" and job.sound_dropped
    assert job.cost_estimate == 5 * 800  # charged as silent
    assert not kling.takes_sound
    # Remembered: later jobs go once, without the field, charged silent and flagged so their member is told.
    later = await paid.create(ask("off", prompt="a silent fox"))
    unchosen = await paid.create(ask(prompt="a fox"))
    assert [("audio" in b["settings"]) for b in bodies(sim)[2:]] == [False, False]
    assert (later.sound_dropped, later.cost_estimate) == (True, 4000)
    assert (unchosen.sound_dropped, unchosen.cost_estimate) == (False, 4000)
    assert paid.cost_of(5, "720p", "on") == 4000 and not paid.takes_sound
    assert sum("refused settings.audio" in r.getMessage() for r in caplog.records) == 1  # logged once


async def test_a_refusal_that_is_not_about_sound_fails_the_job_and_is_not_remembered(
    sim: KlingSimulator, paid: JobService, kling: KlingClient
) -> None:
    # A gateway that fetches no URLs refuses this first frame whatever the sound: the same refusal without audio.
    sim.variant = GatewayVariant(first_frame="base64_only")
    request = JobRequest(
        "image", "waves", sound="on", image_url="https://cdn.test/frame.png", guild_id=GUILD, user_id=7
    )
    with pytest.raises(SubmitRefused, match="does not fetch URLs"):
        await paid.create(request)
    assert [("audio" in b["settings"]) for b in bodies(sim)] == [True, False]
    assert sim.tasks == {} and kling.takes_sound


async def test_an_image_job_refused_for_its_sound_keeps_its_first_frame(sim: KlingSimulator, paid: JobService) -> None:
    sim.variant = GatewayVariant(audio="refuse")
    url = "https://example.org/frame.png"  # a placeholder the simulator takes unchecked
    job = await paid.create(JobRequest("image", "", sound="off", image_url=url, guild_id=GUILD, user_id=7))
    assert [b["contents"][0]["url"] for b in bodies(sim)] == [url, url]
    assert job.sound_dropped and len(sim.tasks) == 1

"""A job's options are declared once (bot/core/options.py): a new option declared there reaches the API body the
simulator receives, and both the intake and the simulator check it by that declaration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.core import options
from bot.core.jobs import JobRequest, JobService
from bot.core.options import InvalidOption, JobOptions, Option
from bot.provider.errors import KlingBadRequest
from bot.provider.kling import KlingClient
from bot.provider.simulator import KlingSimulator

CAMERA = Option(
    name="camera",
    allowed=("off", "on"),
    default="off",
    refusal=lambda value: f"The camera must be off or on, not {value}.",
    api_field="camera_mode",
)


@pytest.fixture
def camera() -> Iterator[Option]:
    """The throwaway option, declared for one test (every reader of the declaration sees the same list)."""
    options.OPTIONS.append(CAMERA)
    try:
        yield CAMERA
    finally:
        options.OPTIONS.remove(CAMERA)


def submitted_settings(sim: KlingSimulator) -> dict[str, object]:
    [post] = [r for r in sim.requests if r.method == "POST"]
    settings: dict[str, object] = post.json["settings"]
    return settings


async def test_a_declared_option_with_no_jobs_column_is_refused_loudly_before_anything_is_sent(
    camera: Option, sim: KlingSimulator, service: JobService
) -> None:
    # Storing an option takes a `jobs` column (a migration) and a `Job` field of its name; without one the job
    # is not written, charged or sent, rather than sent without the member's choice.
    with pytest.raises(TypeError, match="camera"):
        await service.create(JobRequest(kind="text", prompt="a quiet fox"))
    assert sim.requests == []


async def test_a_stored_job_sends_each_declared_option(camera: Option, sim: KlingSimulator, kling: KlingClient) -> None:
    # A row read back (here one with no `camera` column) sends the declared default.
    row = JobOptions.stored("text", type("Row", (), {"duration": 6, "resolution": "1080p", "aspect_ratio": "9:16"}))
    await kling.submit_text("a quiet fox", options=row, external_task_id="row")
    assert submitted_settings(sim) == {
        "duration": 6,
        "resolution": "1080p",
        "aspect_ratio": "9:16",
        "camera_mode": "off",
    }


async def test_a_declared_option_is_sent_as_chosen(camera: Option, sim: KlingSimulator, kling: KlingClient) -> None:
    chosen = JobOptions.of("image", {"duration": 4, "camera": "on"})
    await kling.submit_image(None, url_frame="https://example.org/f.jpg", options=chosen, external_task_id="s")
    assert submitted_settings(sim) == {"duration": 4, "resolution": "720p", "camera_mode": "on"}


def test_the_intake_refuses_a_value_outside_the_declaration(camera: Option) -> None:
    with pytest.raises(InvalidOption, match=r"The camera must be off or on, not loud\."):
        JobOptions.of("text", {"camera": "loud"})


async def test_the_simulator_refuses_a_value_outside_the_declaration(
    camera: Option, sim: KlingSimulator, kling: KlingClient
) -> None:
    unchecked = JobOptions(
        "text", (("duration", 5), ("resolution", "720p"), ("aspect_ratio", "1:1"), ("camera", "loud"))
    )
    with pytest.raises(KlingBadRequest, match=r"camera_mode 'loud' is not supported \(off, on\)"):
        await kling.submit_text("a loud fox", options=unchecked, external_task_id="loud")
    assert sim.tasks == {}


@pytest.mark.parametrize(
    ("kind", "chosen", "words"),
    [
        ("text", {"duration": 16}, "The duration must be a whole number of seconds from 3 to 15, not 16."),
        ("text", {"duration": True}, "The duration must be a whole number of seconds from 3 to 15, not True."),
        ("text", {"duration": 5.0}, "The duration must be a whole number of seconds from 3 to 15, not 5.0."),
        ("text", {"resolution": "4k"}, "The resolution must be 720p or 1080p, not 4k."),
        ("text", {"aspect_ratio": "4:3"}, "The aspect ratio must be 16:9, 9:16 or 1:1, not 4:3."),
        (
            "image",
            {"aspect_ratio": "1:1"},
            "An image video takes its shape from the image; leave the aspect ratio out.",
        ),
    ],
)
def test_todays_options_are_refused_in_their_words(kind: str, chosen: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        JobOptions.of(kind, chosen)
    assert str(refused.value) == words


@pytest.mark.parametrize(
    ("kind", "settings", "words"),
    [
        ("text", {"duration": 2}, "duration must be an integer from 3 to 15"),
        ("text", {"duration": "5"}, "duration must be an integer from 3 to 15"),
        ("text", {"duration": 5.0}, "duration must be an integer from 3 to 15"),
        ("text", {"resolution": "4k"}, "resolution '4k' is not supported (720p, 1080p)"),
        ("text", {"aspect_ratio": "4:3"}, "aspect_ratio '4:3' is not supported (16:9, 9:16, 1:1)"),
        ("image", {"aspect_ratio": "1:1"}, "aspect_ratio is not accepted for image to video"),
    ],
)
def test_the_providers_check_uses_the_same_declaration(kind: str, settings: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        options.check_settings(kind, settings)
    assert str(refused.value) == words


def test_options_cost_by_their_declared_roles() -> None:
    rates = {"720p": 800, "1080p": 1000}
    assert JobOptions.of("text", {"duration": 7, "resolution": "1080p"}).cost(rates) == 7000
    assert JobOptions.of("image", {}).cost(rates) == 5 * 800

"""The end frame at the service: refused (nothing written, nothing sent) where the model takes no last frame or
the video is a text video; stored in `images` like the first frame and sent from there as Base64."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_settings
from bot.core.jobs import InvalidRequest, JobRequest, JobService
from bot.media.images import prepare_first_frame
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import make_image

OPEN = ("reserved", "submitted", "processing", "succeeded", "failed", "delivered")


@pytest.mark.parametrize(
    ("kind", "message"),
    [("image", "This video model takes no end frame"), ("text", "A text video takes no image")],
)
async def test_an_end_frame_the_job_cannot_take_writes_and_sends_nothing(
    sim: KlingSimulator, service: JobService, store: Store, png_frame: bytes, kind: str, message: str
) -> None:
    frame = prepare_first_frame(png_frame)
    first = {"image": frame} if kind == "image" else {}
    with pytest.raises(InvalidRequest, match=message):
        await service.create(JobRequest(kind, "a door", end_image=frame, **first))  # type: ignore[arg-type]
    assert sim.requests == [] and await store.jobs_in(OPEN) == []


async def test_the_end_frame_is_stored_and_sent_from_the_store(
    sim: KlingSimulator, service: JobService, store: Store, png_frame: bytes
) -> None:
    sim.model = service.kling.model = "kling-3.0"
    first, end = prepare_first_frame(png_frame), prepare_first_frame(make_image(400, 400))
    job = await service.create(JobRequest("image", "", image=first, end_image=end))
    [post] = [r for r in sim.requests if r.method == "POST"]
    assert post.json["contents"] == [
        {"type": "first_frame", "url": first.base64},
        {"type": "last_frame", "url": end.base64},
    ]
    stored = await store.get_image(job.end_image_sha256 or "")
    assert stored is not None and (stored.width, stored.height) == (400, 400)


def test_kling_model_names_the_model_and_not_the_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLING_MODEL", raising=False)
    base = {"kling_api_key": "k", "kling_endpoint_path": "acct"}
    assert load_settings(env_file=None, **base).kling_model == "kling-3.0-turbo"
    chosen = load_settings(env_file=None, **base, kling_model="kling-3.0")
    assert chosen.kling_model == "kling-3.0" and chosen.kling_api_root.endswith("/acct")
    with pytest.raises(ConfigError, match="KLING_MODEL"):
        load_settings(env_file=None, **base, kling_model="kling/3.0")

"""KLING_MODEL and the last frame at the API: the model names the submit paths, a last frame goes out only for a
model documented to take one, and the simulator takes, refuses or ignores it as its variant says."""

from __future__ import annotations

import base64

import aiohttp
import pytest
from pydantic import SecretStr

from bot.core.options import JobOptions, takes_frame
from bot.provider.errors import KlingBadRequest
from bot.provider.kling import KlingClient
from bot.provider.sim_variant import GatewayVariant
from bot.provider.simulator import KlingSimulator
from tests.conftest import API_KEY, make_image

IMAGE_5S = JobOptions.of("image", {"duration": 5, "resolution": "720p"})
FIRST, LAST = base64.b64encode(make_image(640, 480)).decode(), base64.b64encode(make_image(500, 500)).decode()


def client(sim: KlingSimulator, session: aiohttp.ClientSession, model: str) -> KlingClient:
    root = f"{sim.base_url()}/acct-endpoint"
    return KlingClient(session, root_url=root, api_key=SecretStr(API_KEY), max_retries=0, model=model)


async def submit(kling: KlingClient, end_frame: str | None = LAST) -> None:
    await kling.submit_image("a door closes", base64_frame=FIRST, end_frame=end_frame, options=IMAGE_5S,
                             external_task_id="job-1")  # fmt: skip


def test_only_kling_3_is_documented_to_take_a_last_frame() -> None:
    assert takes_frame("kling-3.0", "end_image") and not takes_frame("kling-3.0-turbo", "end_image")
    assert takes_frame("kling-3.0-turbo", "image") and takes_frame("any-model", "image")
    assert not takes_frame("kling-3.0-omni", "end_image")  # not proven: assumed not


async def test_kling_3_sends_the_last_frame_at_its_path(sim: KlingSimulator, session: aiohttp.ClientSession) -> None:
    sim.model = "kling-3.0"
    await submit(client(sim, session, "kling-3.0"))
    [post] = sim.requests
    assert post.path == "/v1/ai/acct-endpoint/kling/videos/image-to-video/kling-3.0"
    assert post.json["contents"] == [
        {"type": "first_frame", "url": FIRST},
        {"type": "last_frame", "url": LAST},
        {"type": "prompt", "text": "a door closes"},
    ]
    assert len(sim.tasks) == 1


async def test_turbo_refuses_a_last_frame_before_sending(sim: KlingSimulator, session: aiohttp.ClientSession) -> None:
    with pytest.raises(KlingBadRequest, match="takes no last frame"):
        await submit(client(sim, session, "kling-3.0-turbo"))
    assert sim.requests == []
    await submit(client(sim, session, "kling-3.0-turbo"), end_frame=None)
    assert [i["type"] for i in sim.requests[0].json["contents"]] == ["first_frame", "prompt"]


async def test_the_simulator_knows_only_its_own_model(sim: KlingSimulator, session: aiohttp.ClientSession) -> None:
    with pytest.raises(KlingBadRequest) as refused:
        await submit(client(sim, session, "kling-3.0"))  # the simulator serves turbo
    assert (refused.value.status, refused.value.code) == (404, 1203)
    with pytest.raises(KlingBadRequest):
        await client(sim, session, "kling-9").submit_text("x", options=JobOptions.of("text", {}), external_task_id="t")
    assert not sim.tasks


async def raw_submit(sim: KlingSimulator, session: aiohttp.ClientSession, model: str) -> int:
    """A body with a last frame posted as is (turbo's client never sends one): the HTTP status."""
    async with session.post(
        f"{sim.base_url()}/acct-endpoint/kling/videos/image-to-video/{model}",
        json={"contents": [{"type": "first_frame", "url": FIRST}, {"type": "last_frame", "url": LAST}]},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as answer:
        body = await answer.json()
    if answer.status != 200:
        assert body["code"] == 1201 and "last_frame is not supported" in body["message"]
    return answer.status


@pytest.mark.parametrize(("model", "variant", "status"), [
    ("kling-3.0-turbo", "documented", 400),
    ("kling-3.0-turbo", "accept", 200),
    ("kling-3.0", "documented", 200),
    ("kling-3.0", "refuse", 400),
    ("kling-3.0", "ignore", 200),
])  # fmt: skip
async def test_the_last_frame_variant(
    sim: KlingSimulator, session: aiohttp.ClientSession, model: str, variant: str, status: int
) -> None:
    sim.model = model
    sim.variant = GatewayVariant.parse([f"last_frame={variant}"])
    assert await raw_submit(sim, session, model) == status
    assert len(sim.tasks) == (status == 200)

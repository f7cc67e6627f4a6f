"""The API client against the simulator over real HTTP: bodies, batching, errors, retries, secrets."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from bot.core.options import JobOptions
from bot.provider.errors import (
    KlingAccountError,
    KlingAuthError,
    KlingBadRequest,
    KlingContentPolicy,
    KlingRateLimited,
    KlingSubmitUncertain,
    KlingUnavailable,
)
from bot.provider.kling import KlingClient
from bot.provider.sim_variant import GatewayVariant
from bot.provider.simulator import KlingSimulator
from bot.serving.server import serve
from tests.conftest import API_KEY, RecordedSleeps, make_image

TEXT_PATH = "/v1/ai/acct-endpoint/kling/videos/text-to-video/kling-3.0-turbo"
IMAGE_PATH = "/v1/ai/acct-endpoint/kling/videos/image-to-video/kling-3.0-turbo"
TASKS_PATH = "/v1/ai/acct-endpoint/kling/tasks"


def posts(sim: KlingSimulator) -> list:
    return [r for r in sim.requests if r.method == "POST"]


def queries(sim: KlingSimulator) -> list:
    return [r for r in sim.requests if r.path == TASKS_PATH]


TEXT_5S = JobOptions.of("text", {"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"})
IMAGE_5S = JobOptions.of("image", {"duration": 5, "resolution": "720p"})


async def test_submit_text_sends_the_reference_body(sim: KlingSimulator, kling: KlingClient) -> None:
    task = await kling.submit_text(
        "A golden retriever running on a sunny beach",
        options=JobOptions.of("text", {"duration": 5, "resolution": "1080p", "aspect_ratio": "16:9"}),
        external_task_id="job-1",
    )
    [request] = sim.requests
    assert request.path == TEXT_PATH
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.json == {
        "prompt": "A golden retriever running on a sunny beach",
        "settings": {"resolution": "1080p", "aspect_ratio": "16:9", "duration": 5},
        "options": {"external_task_id": "job-1", "watermark_info": {"enabled": False}},
    }
    assert task.status == "submitted"
    assert task.id.isdigit() and int(task.id) > 2**53


async def test_submit_image_sends_contents_and_no_aspect_ratio(sim: KlingSimulator, kling: KlingClient) -> None:
    await kling.submit_image(
        "waves",
        url_frame="https://example.org/frame.jpg",
        options=JobOptions.of("image", {"duration": 8, "resolution": "720p"}),
        external_task_id="job-2",
    )
    [request] = sim.requests
    assert request.path == IMAGE_PATH
    assert request.json == {
        "contents": [
            {"type": "first_frame", "url": "https://example.org/frame.jpg"},
            {"type": "prompt", "text": "waves"},
        ],
        "settings": {"resolution": "720p", "duration": 8},
        "options": {"external_task_id": "job-2", "watermark_info": {"enabled": False}},
    }


async def test_query_batches_45_ids_into_3_requests(sim: KlingSimulator, kling: KlingClient) -> None:
    ids = []
    for n in range(45):
        task = await kling.submit_text(
            f"clip {n}",
            options=JobOptions.of("text", {"duration": 3, "resolution": "720p", "aspect_ratio": "1:1"}),
            external_task_id=f"j{n}",
        )
        ids.append(task.id)
    tasks = await kling.query(ids)
    assert sorted(t.id for t in tasks) == sorted(ids)
    sizes = [len(r.query["task_ids"].split(",")) for r in queries(sim)]
    assert sizes == [20, 20, 5]
    succeeded = tasks[0]
    assert succeeded.status == "succeeded"
    assert succeeded.video is not None and succeeded.video.url.endswith(".mp4")
    assert succeeded.billed_amount == "2.4"  # 3 s at 720p, 0.8 per second


async def test_unknown_id_answers_an_empty_list(kling: KlingClient) -> None:
    assert await kling.query(["12345"]) == []
    assert await kling.find_external("never-sent") is None


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("auth", KlingAuthError),
        ("credits", KlingAccountError),
        ("rate_limit", KlingRateLimited),
        ("concurrency", KlingRateLimited),
        ("server_error", KlingUnavailable),
        ("unavailable", KlingUnavailable),
        ("html", KlingUnavailable),
        ("bad_json", KlingUnavailable),
    ],
)
async def test_each_fault_becomes_its_typed_error(
    sim: KlingSimulator, session: aiohttp.ClientSession, fault: str, error: type[Exception]
) -> None:
    client = KlingClient(session, root_url=f"{sim.base_url()}/acct-endpoint", api_key=SecretStr(API_KEY), max_retries=0)
    sim.fail_next(fault, on="query")
    with pytest.raises(error):
        await client.query(["1"])


async def test_wrong_key_is_an_auth_error_and_is_not_retried(
    sim: KlingSimulator, session: aiohttp.ClientSession
) -> None:
    sleeps = RecordedSleeps()
    client = KlingClient(session, root_url=f"{sim.base_url()}/acct-endpoint", api_key=SecretStr("wrong"), sleep=sleeps)
    with pytest.raises(KlingAuthError) as caught:
        await client.query(["1"])
    assert caught.value.status == 401
    assert len(sim.requests) == 1 and sleeps.delays == []


async def test_content_policy_is_refused_without_retry(sim: KlingSimulator, kling: KlingClient) -> None:
    with pytest.raises(KlingContentPolicy) as caught:
        await kling.submit_text(
            "something forbidden",
            options=JobOptions.of("text", {"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"}),
            external_task_id="j",
        )
    assert caught.value.code == 1301
    assert len(posts(sim)) == 1


async def test_bad_request_carries_the_providers_message(sim: KlingSimulator, kling: KlingClient) -> None:
    await kling.submit_text(
        "one",
        options=JobOptions.of("text", {"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"}),
        external_task_id="dup",
    )
    with pytest.raises(KlingBadRequest) as caught:
        # A second task under the same external id is refused (1201); it does not exist under another id.
        await kling.submit_image(
            None,
            base64_frame="not-base64!",
            options=IMAGE_5S,
            external_task_id="o",
        )
    assert caught.value.code == 1201
    assert caught.value.message


async def test_submit_retries_a_rate_limit_honouring_retry_after(
    sim: KlingSimulator, kling: KlingClient, sleeps: RecordedSleeps
) -> None:
    sim.fail_next("rate_limit", on="submit", times=2, retry_after=7)
    task = await kling.submit_text(
        "ok",
        options=JobOptions.of("text", {"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"}),
        external_task_id="r",
    )
    assert task.status == "submitted"
    assert len(posts(sim)) == 3
    assert len(sleeps.delays) == 2 and all(d >= 7 for d in sleeps.delays)


async def test_rate_limit_past_the_retries_is_raised(sim: KlingSimulator, kling: KlingClient) -> None:
    sim.fail_next("rate_limit", on="submit", times=10)
    with pytest.raises(KlingRateLimited):
        await kling.submit_text(
            "ok",
            options=JobOptions.of("text", {"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"}),
            external_task_id="r",
        )
    assert len(posts(sim)) == 4  # the first try and three retries


async def test_query_retries_server_errors_with_growing_backoff(
    sim: KlingSimulator, kling: KlingClient, sleeps: RecordedSleeps
) -> None:
    sim.fail_next("server_error", on="query", times=1)
    sim.fail_next("html", on="query", times=1)
    assert await kling.query(["1"]) == []
    assert len(queries(sim)) == 3
    assert len(sleeps.delays) == 2 and 0 < sleeps.delays[0] <= 1.0 < sleeps.delays[1] * 2


async def test_submit_after_a_lost_answer_finds_the_task_and_does_not_resend(
    sim: KlingSimulator, kling: KlingClient
) -> None:
    sim.fail_next("accept_then_error", on="submit")
    task = await kling.submit_text(
        "x",
        options=JobOptions.of("text", {"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"}),
        external_task_id="lost",
    )
    assert len(posts(sim)) == 1
    assert [t.id for t in sim.tasks.values()] == [task.id]
    assert queries(sim)[0].query["external_task_ids"] == "lost"


async def test_a_submit_after_a_server_error_is_never_resent_by_the_client(
    sim: KlingSimulator, kling: KlingClient
) -> None:
    sim.fail_next("server_error", on="submit")
    with pytest.raises(KlingSubmitUncertain):
        await kling.submit_text(
            "x",
            options=JobOptions.of("text", {"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"}),
            external_task_id="retry",
        )
    assert len(posts(sim)) == 1 and sim.tasks == {}
    assert [q.query["external_task_ids"] for q in queries(sim)] == ["retry"]  # looked up once, at once


async def test_a_slow_answer_times_out_as_unavailable(sim: KlingSimulator, session: aiohttp.ClientSession) -> None:
    client = KlingClient(
        session, root_url=f"{sim.base_url()}/acct-endpoint", api_key=SecretStr(API_KEY), timeout=0.2, max_retries=0
    )
    sim.fail_next("slow", on="query", delay=1.0)
    with pytest.raises(KlingUnavailable, match="no answer within"):
        await client.query(["1"])


async def test_malformed_records_are_skipped_not_fatal(sim: KlingSimulator, kling: KlingClient) -> None:
    sim.fail_next("malformed", on="query")
    assert await kling.query(["1"]) == []


@pytest.fixture
async def raw_api() -> AsyncIterator[tuple[str, list[dict]]]:
    """A bare server answering queries with hand-written JSON, for what the simulator never sends."""
    answers: list[dict] = []

    async def tasks(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(answers.pop(0)), content_type="application/json")

    app = web.Application()
    app.router.add_get("/e/kling/tasks", tasks)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}/e", answers
    finally:
        await runner.cleanup()


async def test_numeric_ids_above_2_53_are_kept_exactly_and_unknown_fields_ignored(
    raw_api: tuple[str, list[dict]], session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    root, answers = raw_api
    big = 2**63 - 7
    answers.append(
        {
            "code": 0,
            "message": "SUCCEED",
            "request_id": "r",
            "surprise": {"nested": [1, 2]},
            "data": [
                {"id": big, "status": "queued_by_gateway", "message": "", "extra_field": True},
                {
                    "id": "901930004609634393",
                    "status": "succeeded",
                    "outputs": [
                        {"type": "video", "id": 901930006506119262, "url": "https://cdn/v.mp4", "duration": "5.041"}
                    ],
                    "billing": [{"amount": "4.8", "charge_type": "unit", "package_type": "video"}],
                },
            ],
        }
    )
    client = KlingClient(session, root_url=root, api_key=SecretStr(API_KEY))
    with caplog.at_level(logging.WARNING):
        unknown, done = await client.query([str(big), "901930004609634393"])
    assert unknown.id == str(big) and unknown.status == "queued_by_gateway"
    assert "status we do not know" in caplog.text
    assert done.video is not None and done.video.id == "901930006506119262" and done.video.seconds == 5.041
    assert done.billed_amount == "4.8"


async def test_a_record_of_an_id_not_asked_for_is_left_out(
    raw_api: tuple[str, list[dict]], session: aiohttp.ClientSession
) -> None:
    root, answers = raw_api
    record = {"status": "processing", "message": "", "create_time": 1, "update_time": 2}
    answers.append({"code": 0, "data": [{**record, "id": i} for i in ("1", "2", "99")]})  # every id asked, and one more
    client = KlingClient(session, root_url=root, api_key=SecretStr(API_KEY))
    assert sorted(task.id for task in await client.query(["1", "2"])) == ["1", "2"]


async def test_code_other_than_zero_fails_even_with_http_200(
    raw_api: tuple[str, list[dict]], session: aiohttp.ClientSession
) -> None:
    root, answers = raw_api
    answers.append({"code": 1301, "message": "content safety", "data": None})
    client = KlingClient(session, root_url=root, api_key=SecretStr(API_KEY))
    with pytest.raises(KlingContentPolicy, match="content safety"):
        await client.query(["x"])


async def test_the_key_never_appears_in_repr_errors_or_logs(
    sim: KlingSimulator, kling: KlingClient, caplog: pytest.LogCaptureFixture
) -> None:
    sim.fail_next("auth", on="query")
    sim.fail_next("server_error", on="query", times=2)
    with caplog.at_level(logging.DEBUG):
        for _ in range(2):
            try:
                await kling.query(["1"])
            except Exception as exc:
                assert API_KEY not in f"{exc!s} {exc!r}"
    assert API_KEY not in repr(kling)
    assert API_KEY not in caplog.text


async def submitted_ids(kling: KlingClient, count: int) -> list[str]:
    tasks = [
        await kling.submit_text(
            f"p{n}",
            options=JobOptions.of("text", {"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"}),
            external_task_id=f"e{n}",
        )
        for n in range(count)
    ]
    return [t.id for t in tasks]


@pytest.mark.parametrize(
    ("variant", "learned"),
    [
        (GatewayVariant(query_lists="partial"), 1),
        (GatewayVariant(query_lists="refuse"), 1),
        (GatewayVariant(query_cap=3), 3),  # the list of 6 is refused, half of it works
    ],
    ids=["partial", "refuse", "cap-3"],
)
async def test_a_gateway_that_takes_fewer_ids_teaches_the_batch_size_once(
    sim: KlingSimulator, kling: KlingClient, variant: GatewayVariant, learned: int, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await submitted_ids(kling, 6)
    sim.variant = variant
    with caplog.at_level(logging.INFO):
        assert sorted(t.id for t in await kling.query(ids)) == sorted(ids)
        assert kling.batch_size == learned
        before = len(queries(sim))
        assert len(await kling.query(ids)) == 6
    assert len(queries(sim)) - before == -(-6 // learned)  # the learned size from the first request on
    assert caplog.text.count(f"answers {learned} id(s) per query") == 1


async def test_unknown_ids_in_a_list_do_not_shrink_the_batch(sim: KlingSimulator, kling: KlingClient) -> None:
    ids = await submitted_ids(kling, 3)
    found = await kling.query([*ids, "404404", "505505"])
    assert sorted(t.id for t in found) == sorted(ids) and kling.batch_size == 20


async def test_retry_after_is_capped_at_a_minute(
    sim: KlingSimulator, kling: KlingClient, sleeps: RecordedSleeps
) -> None:
    sim.fail_next("rate_limit", on="query", retry_after=86_400)
    await kling.query(["1"])
    assert sleeps.delays and max(sleeps.delays) <= 60


async def test_a_refused_first_frame_form_is_retried_once_in_the_other_and_remembered(
    sim: KlingSimulator, kling: KlingClient, caplog: pytest.LogCaptureFixture
) -> None:
    sim.variant = GatewayVariant(first_frame="url_only", fetch_urls=False)
    frame = base64.b64encode(make_image(400, 400)).decode()
    with caplog.at_level(logging.INFO):
        for n in range(2):
            await kling.submit_image(
                None, base64_frame=frame, url_frame=f"https://cdn.test/{n}.png", options=IMAGE_5S,
                external_task_id=f"f{n}",
            )  # fmt: skip
    forms = [p.json["contents"][0]["url"][:5] for p in posts(sim)]
    assert forms == [frame[:5], "https", "https"] and kling.frame_form == "url"
    assert caplog.text.count("as url from now on") == 1


async def test_odd_field_types_never_drop_a_record(
    raw_api: tuple[str, list[dict]], session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    root, answers = raw_api
    record = {
        "id": 77,
        "status": "SUCCEED",
        "message": 0,
        "create_time": "1764000000000",
        "update_time": {"odd": True},
        "outputs": [{"type": "video", "id": 8, "url": "https://cdn/v.mp4", "duration": 5.041}],
        "billing": [{"amount": 4.8}],
    }
    answers.append({"code": 0, "message": "", "data": [record, {"id": "78", "status": "warming_up"}]})
    answers.append({"code": 0, "message": "", "data": [{"id": "78", "status": "warming_up"}]})
    client = KlingClient(session, root_url=root, api_key=SecretStr(API_KEY))
    with caplog.at_level(logging.WARNING):
        done, odd = await client.query(["77", "78"])
        await client.query(["78"])
    assert (done.id, done.status, done.create_time, done.update_time) == ("77", "succeeded", 1764000000000, None)
    assert done.video is not None and done.video.seconds == 5.041 and done.billed_amount == "4.8"
    assert odd.status == "warming_up" and caplog.text.count("'warming_up'") == 1  # logged once, polled on


async def queries_at_once(sim: KlingSimulator, session: aiohttp.ClientSession, at_once: int) -> tuple[int, int]:
    """Ask about 200 tasks (10 lists), each answer held back a little: (most queries in flight at once, queries)."""
    ids = [task.id for task in [
        await KlingClient(session, root_url=f"{sim.base_url()}/acct-endpoint", api_key=SecretStr(API_KEY)).submit_text(
            f"p{n}", options=TEXT_5S, external_task_id=f"e{n}")
        for n in range(200)
    ]]  # fmt: skip
    in_flight, most = 0, 0

    async def started(*_: object) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)

    async def ended(*_: object) -> None:
        nonlocal in_flight
        in_flight -= 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    before = len(queries(sim))
    sim.fail_next("slow", on="query", times=10, delay=0.05)
    async with aiohttp.ClientSession(trace_configs=[trace]) as traced:
        client = KlingClient(
            traced, root_url=f"{sim.base_url()}/acct-endpoint", api_key=SecretStr(API_KEY), query_concurrency=at_once
        )
        assert sorted(t.id for t in await client.query(ids)) == sorted(ids)
    return most, len(queries(sim)) - before


async def test_the_lists_of_one_query_go_out_together_at_most_query_concurrency_at_once(
    sim: KlingSimulator, session: aiohttp.ClientSession
) -> None:
    assert await queries_at_once(sim, session, 3) == (3, 10)  # the same 10 lists, never more than 3 at once


async def test_a_rate_limit_holds_every_query_in_flight_together(
    sim: KlingSimulator, kling: KlingClient, sleeps: RecordedSleeps
) -> None:
    ids = await submitted_ids(kling, 200)
    kling.query_concurrency = 4
    await kling.query(ids)  # a full list answered in full: from now on lists go out together
    before = len(queries(sim))
    sim.fail_next("rate_limit", on="query", retry_after=30)  # one of the first four lists in flight meets it
    assert sorted(t.id for t in await kling.query(ids)) == sorted(ids)
    sent = len(queries(sim)) - before
    assert sent == 11  # ten lists and the one retried
    # The (fake) sleeps return at once, so every list sent after the 429 came back waited its Retry-After: at
    # most the four already in flight went without.
    assert len(sleeps.delays) >= sent - 4 and min(sleeps.delays) >= 29

"""A Kling 3.0 turbo simulator that speaks the provider's API as docs/provider-api.md describes it.

The tests use it over 127.0.0.1; `python -m bot simulate` lets a server owner try the bot without a key or cost.
Faults can be switched on (`fail_next`) to prove the client copes with what the real gateway does. Videos are the
sample mp4, or with `task_videos` one small clip per task whose last frame has a colour of that task's own.

Its parts: the ways a gateway may differ from its page (`sim_variant.py`, `GatewayVariant`), the task model and
its records and callbacks (`sim_tasks.py`), what the HTTP handlers share (`sim_http.py`: answers, faults, the
checks of a submit) and the videos it serves (`sim_videos.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from bot.core.options import DEFAULT_MODEL, takes_frame
from bot.provider.sim_http import (
    FAULTS,
    HTML_PAGE,
    TIMEOUT_PAGE,
    Answer,
    Fault,
    bad,
    check_image,
    decode_base64,
    envelope,
    fault_response,
    fetch_image,
    image_request,
    json_body,
    placeholder,
    refuse,
    section,
    stream_video,
    task_settings,
    text_request,
)
from bot.provider.sim_tasks import RecordedRequest, SimTask, callback_body, send_callback, task_record
from bot.provider.sim_variant import GatewayVariant, describe
from bot.provider.sim_videos import sample_video, silent_task_video, task_video
from bot.serving.server import serve

log = logging.getLogger(__name__)

TICK_SECONDS = 0.02
VARIANT_HELP = (
    "make the gateway differ from its page (repeatable); see bot/provider/sim_variant.py's docstring for the keys"
)


class KlingSimulator:
    """The provider in a box: submit, query, states over time, billing, callbacks and a downloadable mp4."""

    def __init__(
        self,
        *,
        api_key: str = "sim-key",
        endpoint_path: str = "sim",
        render_seconds: float = 2.0,
        processing_after: float | None = None,
        concurrency_limit: int | None = None,
        video_bytes: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        variant: GatewayVariant | None = None,
        model: str = DEFAULT_MODEL,
    ) -> None:
        self.api_key = api_key
        self.model = model  # the only model at the submit paths; another name is an unknown API (404/1203)
        self.endpoint_path = endpoint_path
        self.render_seconds = render_seconds
        self.processing_after = processing_after
        self.concurrency_limit = concurrency_limit
        self.video_bytes = video_bytes
        self.clock = clock
        self.variant = variant if variant is not None else GatewayVariant()
        self.hold = False
        # Fuzzing switches: rewrite each task record a query returns; break the video links ("404" or "html").
        self.rewrite: Callable[[dict[str, Any]], Any] | None = None
        self.video_fault: str | None = None
        self.video_trickle_seconds = 0.0  # > 0: a slow CDN, each video then sent one byte per that many seconds
        self.video_requests: list[str] = []  # the output id of each video GET, in order
        self._videos_flow = asyncio.Event()  # cleared by `hold_videos`: a video GET then waits, unanswered
        self._videos_flow.set()
        # True: each task's video is its own small clip (`task_video`), whose last frame differs per task, so a
        # continued video's first frame can be traced; False: every task serves the sample video.
        self.task_videos = False
        # Make a task's clip from its id (`task_videos`): with an AAC track, as turbo's videos have, or without
        # when the submit asked for `"audio": "off"`.
        self.clip_maker: Callable[[str], bytes] = task_video
        self.silent_clip_maker: Callable[[str], bytes] = silent_task_video
        self._task_clips: dict[str, bytes] = {}  # task id -> its clip, made once
        self.callback_secret: str | None = None  # signs callbacks (Standard Webhooks) when set
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, SimTask] = {}
        # The most tasks unfinished at once, as of each creation (a task finishes here before anyone can hear of it).
        self.most_at_once = 0
        self.fetched_urls: list[str] = []  # first-frame URLs the simulator fetched (variant.fetch_urls)
        self._pending: list[SimTask] = []  # late submits: each appears when the clock reaches its `created`
        self._faults: list[Fault] = []
        self._ids = itertools.count(901930004609634393)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._origin = "http://127.0.0.1:0"
        self._callbacks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._middleware])
        base = "/v1/ai/{endpoint}/kling"
        self.app.router.add_post(f"{base}/videos/text-to-video/{{model}}", self._submit_text)
        self.app.router.add_post(f"{base}/videos/image-to-video/{{model}}", self._submit_image)
        self.app.router.add_get(f"{base}/tasks", self._query)
        self.app.router.add_get("/videos/{output_id}.mp4", self._video)

    # --- control -----------------------------------------------------------------------------------------

    def base_url(self) -> str:
        """The API base, as KLING_BASE_URL takes it."""
        return f"http://127.0.0.1:{self._port}/v1/ai"

    def fail_next(
        self, fault: str, *, on: str = "any", times: int = 1, retry_after: float | None = None, delay: float = 0.0
    ) -> None:
        """The next `times` requests of kind `on` ("submit", "query", "any") get `fault` instead."""
        if fault not in FAULTS or on not in ("submit", "query", "any"):
            raise ValueError(f"unknown fault {fault!r} or request kind {on!r}")
        self._faults.append(Fault(fault, on, times, retry_after, delay))

    def tasks_for(self, external_id: str) -> list[SimTask]:
        """The tasks that exist with this external id, oldest first (late submits only once they appeared)."""
        self._appear()
        return self._existing(external_id)

    def _existing(self, external_id: str) -> list[SimTask]:
        return [task for task in self.tasks.values() if task.external_id == external_id]

    def clear_faults(self) -> None:
        """Forget every fault switched on with `fail_next` that has not played yet."""
        self._faults.clear()

    def finish(self, task_id: str | None = None, *, fail_message: str | None = None) -> None:
        """End one task (or every unfinished one) now: succeeded, or failed with `fail_message`."""
        for task in list(self.tasks.values()):
            if task_id in (None, task.id) and not task.finished:
                task.fail_message = fail_message or task.fail_message
                self._end(task)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0: any free port) and let tasks move by the clock."""
        self._runner, self._port = await serve(self.app, host, port)
        shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else f"[{host}]" if ":" in host else host
        self._origin = f"http://{shown}:{self._port}"
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def close(self) -> None:
        """Stop listening and drop pending callbacks."""
        pending = [*self._callbacks, *([self._ticker] if self._ticker is not None else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._ticker = None
        self._videos_flow.set()  # a held download is answered, not left to the server's shutdown time-out
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _tick(self) -> None:
        # Tasks move by the clock even when nobody asks, as the real ones do (and callbacks say so).
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self._appear()
                for task in list(self.tasks.values()):
                    self._advance(task)
            except Exception:
                log.exception("the simulator could not advance its tasks")

    # --- plumbing ----------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        api = request.path.startswith("/v1/ai/")
        if api:
            body, headers = await json_body(request), dict(request.headers)
            self.requests.append(RecordedRequest(request.method, request.path, dict(request.query), body, headers))
        try:
            return await handler(request)
        except Answer as answer:
            return answer.response
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            if not api:
                raise
            return envelope(None, 1203, f"no such API: {request.method} {request.path}", 404)

    async def _enter(self, request: web.Request, kind: str) -> tuple[Any, Fault | None]:
        """Check the key and the endpoint and apply a pending fault; returns the body and a fault the route plays."""
        fault = self._take_fault(kind)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            fault = None
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise refuse(401, 1000, "authentication failed: no Authorization header")
        if auth != f"Bearer {self.api_key}":
            raise refuse(401, 1002, "authentication failed: invalid access key")
        if request.match_info["endpoint"] != self.endpoint_path:
            raise refuse(404, 1203, "endpoint not found")
        if request.match_info.get("model", self.model) != self.model:
            raise refuse(404, 1203, f"model not found: {request.match_info['model']}")
        if fault is None or fault.kind == "malformed" or (fault.kind, kind) == ("accept_then_error", "submit"):
            return await json_body(request), fault
        raise Answer(fault_response(fault))

    def _take_fault(self, kind: str) -> Fault | None:
        for fault in self._faults:
            if fault.on in ("any", kind):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # --- submit ------------------------------------------------------------------------------------------

    async def _submit_text(self, request: web.Request) -> web.Response:
        body, fault = await self._enter(request, "submit")
        checked, prompt = text_request(body)
        return self._create(checked, "text", prompt, fault)

    async def _submit_image(self, request: web.Request) -> web.Response:
        body, fault = await self._enter(request, "submit")
        checked, prompt, frame, last_frame = image_request(body)
        await self._check_first_frame(frame)
        if last_frame is not None:
            self._check_last_frame(last_frame)
        return self._create(checked, "image", prompt, fault)

    def _check_last_frame(self, url: str) -> None:
        """Take a last frame as the variant says (by default: as Kling documents it for this model)."""
        taken = self.variant.last_frame
        if taken == "documented":
            taken = "accept" if takes_frame(self.model, "end_image") else "refuse"
        if taken == "refuse":
            raise bad(f"invalid parameter: last_frame is not supported by {self.model}")
        if taken == "accept" and not url.startswith(("http://", "https://")):
            check_image(decode_base64(url))

    async def _check_first_frame(self, url: str) -> None:
        """Refuse a first frame as the variant's gateway would: by its form, then (a URL) by what it serves."""
        is_url = url.startswith(("http://", "https://"))
        if is_url and self.variant.first_frame == "base64_only":
            raise bad("first_frame must be raw Base64: this gateway does not fetch URLs")
        if not is_url and self.variant.first_frame == "url_only":
            raise bad("first_frame url must be an http(s) URL")
        if not is_url:
            check_image(decode_base64(url))
        elif self.variant.fetch_urls and not placeholder(url):
            self.fetched_urls.append(url)
            check_image(await fetch_image(url))

    def _create(self, body: dict[str, Any], kind: str, prompt: str, fault: Fault | None) -> web.Response:
        if "audio" in section(body, "settings") and self.variant.audio != "accept":
            if self.variant.audio == "refuse":
                raise bad("invalid parameter: settings.audio is not supported")
            raise Answer(web.Response(status=422, text="Unprocessable Entity"))
        chosen, external, callback_url = task_settings(body, kind)
        duration, resolution = chosen["duration"], chosen["resolution"]
        if external and self.variant.dedupe_external_ids and self.tasks_for(external):
            raise bad("external_task_id already exists")
        if "forbidden" in prompt.lower():
            raise refuse(400, 1301, "prompt did not pass the content safety check")
        if self.concurrency_limit is not None:
            for other in list(self.tasks.values()):
                self._advance(other)
            if sum(not t.finished for t in self.tasks.values()) >= self.concurrency_limit:
                raise refuse(429, 1303, "concurrent task limit exceeded")
        if fault is not None and fault.kind == "malformed":  # an answer the client cannot use: no task id
            return envelope({"status": "submitted", "message": ""})
        now_ms, late = int(time.time() * 1000), self.variant.late_submit
        task = SimTask(
            id=str(next(self._ids)),
            external_id=external,
            kind=kind,
            prompt=prompt,
            duration=duration,
            resolution=resolution,
            created=self.clock() + (late or 0.0),
            callback_url=callback_url,
            fail_message="Video generation failed: internal render error" if "fail-render" in prompt else None,
            create_ms=now_ms,
            update_ms=now_ms,
            sound=chosen["sound"] != "off",  # turbo's videos carry sound unless asked for none
        )
        if late is not None:  # the proxy gave up waiting; the request still reaches the provider, later
            self._pending.append(task)
            log.info("task %s will appear in %gs (late submit)", task.id, late)
            return web.Response(status=504, text=TIMEOUT_PAGE, content_type="text/html")
        self.tasks[task.id] = task
        self.most_at_once = max(self.most_at_once, sum(not t.finished for t in self.tasks.values()))
        log.info("task %s created (%s, %ss, %s)", task.id, kind, duration, resolution)
        if fault is not None:  # accept_then_error: the task exists, but the answer is lost
            raise refuse(500, 5000, "internal error")
        return envelope(task_record(task, self._origin, self.variant))

    def _appear(self) -> None:
        """Let late submits whose time has come exist; a repeated external id is then refused unheard."""
        now = self.clock()
        due = [task for task in self._pending if task.created <= now]
        for task in due:
            self._pending.remove(task)
            if task.external_id and self.variant.dedupe_external_ids and self._existing(task.external_id):
                log.info("late task %s dropped: external_task_id %s already exists", task.id, task.external_id)
                continue
            task.create_ms = task.update_ms = int(time.time() * 1000)
            self.tasks[task.id] = task
            log.info("task %s appeared (late submit)", task.id)

    # --- query and states --------------------------------------------------------------------------------

    async def _query(self, request: web.Request) -> web.Response:
        _, fault = await self._enter(request, "query")
        if fault is not None:  # malformed: records of the wrong shape and type
            return envelope([{"unexpected": True}, {"id": None, "status": 7}])
        task_ids = [i for i in request.query.get("task_ids", "").split(",") if i]
        external_ids = [i for i in request.query.get("external_task_ids", "").split(",") if i]
        cap, lists = self.variant.query_cap, self.variant.query_lists
        if len(task_ids) + len(external_ids) > cap:
            raise bad(f"at most {cap} ids per query")
        if lists == "refuse" and max(len(task_ids), len(external_ids)) > 1:
            raise bad("invalid parameter: task_ids and external_task_ids take one id each")
        self._appear()
        found = [self.tasks[i] for i in task_ids if i in self.tasks]
        found += [t for e in external_ids for t in self.tasks.values() if t.external_id == e]
        if lists == "partial":  # answered as if only the first id had been asked for
            found = found[:1]
        for task in found:
            self._advance(task)
        origin = f"{request.scheme}://{request.host}"
        records = [task_record(task, origin, self.variant) for task in found]
        if self.rewrite is not None:
            records = [self.rewrite(record) for record in records]
        return envelope(records)

    def _advance(self, task: SimTask) -> None:
        """Move a task along by the clock: submitted, then processing, then its end (unless held)."""
        if task.finished:
            return
        age = self.clock() - task.created
        processing_after = self.processing_after if self.processing_after is not None else self.render_seconds / 4
        if not self.hold and age >= self.render_seconds:
            self._end(task)
        elif age >= processing_after and task.status == "submitted":
            self._set(task, "processing")

    def _end(self, task: SimTask) -> None:
        task.finished = True
        if task.fail_message:
            task.message = task.fail_message
            self._set(task, "failed")
        else:
            task.output_id = str(next(self._ids))
            self._set(task, "succeeded")

    def _set(self, task: SimTask, status: str) -> None:
        task.status = status
        task.update_ms = int(time.time() * 1000)
        log.info("task %s is %s", task.id, status)
        if task.callback_url:
            body = callback_body(task, self._origin, self.variant)
            sending = asyncio.get_running_loop().create_task(
                send_callback(task.callback_url, body, self.callback_secret)
            )
            self._callbacks.add(sending)
            sending.add_done_callback(self._callbacks.discard)

    # --- the CDN -----------------------------------------------------------------------------------------

    async def _video(self, request: web.Request) -> web.StreamResponse:
        output_id = request.match_info["output_id"]
        self.video_requests.append(output_id)
        await self._videos_flow.wait()
        trickle = self.video_trickle_seconds  # as set when the request came: later ones may be fast again
        if self.video_fault == "404" or not any(t.output_id == output_id for t in self.tasks.values()):
            raise web.HTTPNotFound()
        if self.video_fault == "html":
            return web.Response(text=HTML_PAGE, content_type="text/html")
        data = self.video_bytes if self.video_bytes is not None else await self._video_data(output_id)
        return await stream_video(request, data, trickle)

    def hold_videos(self) -> None:
        """Video downloads from now on wait, unanswered, until `release_videos` (a CDN that stalls)."""
        self._videos_flow.clear()

    def release_videos(self) -> None:
        """Answer the held video downloads, and the next ones at once."""
        self._videos_flow.set()

    async def _video_data(self, output_id: str) -> bytes:
        if not self.task_videos:
            return sample_video()
        task = next(t for t in self.tasks.values() if t.output_id == output_id)
        if task.id not in self._task_clips:  # encoded off the loop: the bot may share it
            maker = self.clip_maker if task.sound else self.silent_clip_maker
            self._task_clips[task.id] = await asyncio.to_thread(maker, task.id)
        return self._task_clips[task.id]


async def run_forever(
    host: str,
    port: int,
    api_key: str,
    endpoint_path: str,
    render_seconds: float,
    variant: Sequence[str] = (),
    model: str = DEFAULT_MODEL,
) -> int:
    """Serve until interrupted, printing how to point the bot at it; `variant` holds `KEY=VALUE` switches."""
    try:
        parsed = GatewayVariant.parse(variant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    simulator = KlingSimulator(
        api_key=api_key, endpoint_path=endpoint_path, render_seconds=render_seconds, variant=parsed, model=model
    )
    simulator.task_videos = True  # so a video can be continued from its own last frame (480x320, one second)
    await simulator.start(host, port)
    print(
        f"Kling simulator on {simulator._origin}/v1/ai (endpoint path {endpoint_path!r}); point the bot at it with:\n"
        f"  KLING_BASE_URL={simulator._origin}/v1/ai KLING_API_KEY={api_key} KLING_ENDPOINT_PATH={endpoint_path}"
        f" KLING_MODEL={model}\n"
        f"Gateway variant: {describe(parsed)}.\n"
        "Prompts containing 'forbidden' are refused; 'fail-render' fails after rendering. Ctrl-C stops it.",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m bot.provider.simulator`: the simulator alone, until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m bot.provider.simulator", description="A local Kling API simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--endpoint-path", default="sim")
    parser.add_argument("--render-seconds", type=float, default=8.0)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE", help=VARIANT_HELP)
    args = parser.parse_args(argv)
    run = run_forever(
        args.host, args.port, args.api_key, args.endpoint_path, args.render_seconds, args.variant, args.model
    )
    try:
        return asyncio.run(run)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""A Kling 3.0 turbo simulator that speaks the provider's API (shared/api/kling-3.0-turbo.md and the facts notes).

The tests use it over 127.0.0.1; `python -m bot simulate` lets a server owner try the bot without a key or cost.
Faults can be switched on (`fail_next`) to prove the client copes with what the real gateway does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, UnidentifiedImageError

from bot.callbacks import sign
from bot.serving import serve

log = logging.getLogger(__name__)

MODEL = "kling-3.0-turbo"
MAX_IDS = 20
RATES = {"720p": Decimal("0.8"), "1080p": Decimal("1.0")}
HTML_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>" \
    "<hr><center>nginx</center></body></html>"  # fmt: skip


@dataclass
class RecordedRequest:
    """One request as the simulator received it."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]


@dataclass
class SimTask:
    """A task and what decides its fate."""

    id: str
    external_id: str | None
    kind: str
    prompt: str
    duration: int
    resolution: str
    created: float
    callback_url: str | None
    status: str = "submitted"
    message: str = ""
    fail_message: str | None = None
    output_id: str = ""
    create_ms: int = 0
    update_ms: int = 0
    finished: bool = False


@dataclass
class _Fault:
    kind: str
    on: str
    times: int
    retry_after: float | None
    delay: float


@dataclass
class _Outcome:
    status: int
    code: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


class KlingSimulator:
    """The provider in a box: submit, query, states over time, billing and a downloadable mp4."""

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
    ) -> None:
        self.api_key = api_key
        self.endpoint_path = endpoint_path
        self.render_seconds = render_seconds
        self.processing_after = processing_after
        self.concurrency_limit = concurrency_limit
        self.video_bytes = video_bytes
        self.clock = clock
        self.hold = False
        # Fuzzing switches: rewrite each task record a query returns; break the video links.
        self.rewrite: Callable[[dict[str, Any]], Any] | None = None
        self.video_fault: str | None = None  # "404" or "html"
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, SimTask] = {}
        self._faults: list[_Fault] = []
        self._ids = itertools.count(901930004609634393)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._callbacks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.callback_secret: str | None = None  # signs callbacks (Standard Webhooks) when set
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        base = "/v1/ai/{endpoint}/kling"
        self.app.router.add_post(f"{base}/videos/text-to-video/{MODEL}", self._submit_text)
        self.app.router.add_post(f"{base}/videos/image-to-video/{MODEL}", self._submit_image)
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
        self._faults.append(_Fault(fault, on, times, retry_after, delay))

    def finish(self, task_id: str | None = None, *, fail_message: str | None = None) -> None:
        """End one task (or every unfinished one) now: succeeded, or failed with `fail_message`."""
        for task in self.tasks.values():
            if task_id in (None, task.id) and not task.finished:
                task.fail_message = fail_message or task.fail_message
                self._end(task)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0: any free port)."""
        self._runner, self._port = await serve(self.app, host, port)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        # Tasks move by the clock even when nobody asks, as the real ones do (and callbacks say so).
        while True:
            await asyncio.sleep(0.02)
            for task in list(self.tasks.values()):
                self._advance(task)

    async def close(self) -> None:
        """Stop listening and drop pending callbacks."""
        if self._ticker is not None:
            self._ticker.cancel()
        for task in self._callbacks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- plumbing ----------------------------------------------------------------------------------------

    @staticmethod
    def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    def _envelope(self, data: Any, code: int = 0, message: str = "SUCCEED", status: int = 200) -> web.Response:
        return self._json(status, {"code": code, "message": message, "data": data, "request_id": str(uuid.uuid4())})

    def _error(self, outcome: _Outcome) -> web.Response:
        body = {"code": outcome.code, "message": outcome.message, "data": None, "request_id": str(uuid.uuid4())}
        return self._json(outcome.status, body, outcome.headers)

    async def _enter(self, request: web.Request, kind: str) -> tuple[Any, web.Response | None, _Fault | None]:
        """Record the request, check the key and the endpoint, and pick a pending fault."""
        body: Any = None
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                body = None
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), body, dict(request.headers))
        )
        fault = self._take_fault(kind)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            fault = None
        auth = request.headers.get("Authorization", "")
        if not auth:
            return body, self._error(_Outcome(401, 1000, "authentication failed: no Authorization header")), None
        if auth != f"Bearer {self.api_key}":
            return body, self._error(_Outcome(401, 1002, "authentication failed: invalid access key")), None
        if request.match_info["endpoint"] != self.endpoint_path:
            return body, self._error(_Outcome(404, 1203, "endpoint not found")), None
        if fault is not None and fault.kind != "accept_then_error":
            return body, self._fault_response(fault), None
        return body, None, fault

    def _take_fault(self, kind: str) -> _Fault | None:
        for fault in self._faults:
            if fault.on in ("any", kind):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: _Fault) -> web.Response:
        if fault.kind == "empty":
            return web.Response(status=200, body=b"", content_type="application/json")
        if fault.kind in ("html", "bad_json"):
            return web.Response(status=502 if fault.kind == "html" else 200, text=HTML_PAGE, content_type="text/html")
        if fault.kind == "malformed":
            return self._envelope([{"unexpected": True}, {"id": None, "status": 7}])
        retry = {"Retry-After": f"{fault.retry_after if fault.retry_after is not None else 1:g}"}
        outcomes = {
            "rate_limit": _Outcome(429, 1302, "request rate limit exceeded", retry),
            "concurrency": _Outcome(429, 1303, "concurrent task limit exceeded", retry),
            "server_error": _Outcome(500, 5000, "internal error"),
            "unavailable": _Outcome(503, 5001, "service under maintenance"),
            "credits": _Outcome(429, 1101, "resource pack exhausted"),
            "auth": _Outcome(401, 1002, "authentication failed: invalid access key"),
        }
        if fault.kind not in outcomes:
            raise ValueError(f"unknown fault {fault.kind!r}")
        return self._error(outcomes[fault.kind])

    # --- submit ------------------------------------------------------------------------------------------

    async def _submit_text(self, request: web.Request) -> web.Response:
        body, refused, fault = await self._enter(request, "submit")
        if refused is not None:
            return refused
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            return self._error(_Outcome(400, 1201, "prompt is required"))
        prompt = body["prompt"]
        if len(prompt) > 3072:
            return self._error(_Outcome(400, 1201, "prompt must be at most 3072 characters"))
        settings = body.get("settings") or {}
        aspect = settings.get("aspect_ratio", "16:9")
        if aspect not in ("16:9", "9:16", "1:1"):
            return self._error(_Outcome(400, 1201, f"aspect_ratio {aspect!r} is not supported"))
        return self._create(body, "text", prompt, fault)

    async def _submit_image(self, request: web.Request) -> web.Response:
        body, refused, fault = await self._enter(request, "submit")
        if refused is not None:
            return refused
        if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
            return self._error(_Outcome(400, 1201, "contents is required"))
        if "aspect_ratio" in (body.get("settings") or {}):
            return self._error(_Outcome(400, 1201, "aspect_ratio is not accepted for image to video"))
        frames = [c for c in body["contents"] if isinstance(c, dict) and c.get("type") == "first_frame"]
        prompts = [c for c in body["contents"] if isinstance(c, dict) and c.get("type") == "prompt"]
        if len(frames) != 1 or not isinstance(frames[0].get("url"), str):
            return self._error(_Outcome(400, 1201, "exactly one first_frame is required"))
        problem = _check_first_frame(frames[0]["url"])
        if problem:
            return self._error(_Outcome(400, 1201, problem))
        prompt = str(prompts[0].get("text", "")) if prompts else ""
        if len(prompt) > 2500:
            return self._error(_Outcome(400, 1201, "prompt must be at most 2500 characters"))
        return self._create(body, "image", prompt, fault)

    def _create(self, body: dict[str, Any], kind: str, prompt: str, fault: _Fault | None) -> web.Response:
        settings = body.get("settings") or {}
        options = body.get("options") or {}
        duration, resolution = settings.get("duration", 5), settings.get("resolution", "720p")
        if not isinstance(duration, int) or isinstance(duration, bool) or not 3 <= duration <= 15:
            return self._error(_Outcome(400, 1201, "duration must be an integer from 3 to 15"))
        if resolution not in RATES:
            return self._error(_Outcome(400, 1201, f"resolution {resolution!r} is not supported"))
        external = options.get("external_task_id")
        if external and any(t.external_id == external for t in self.tasks.values()):
            return self._error(_Outcome(400, 1201, "external_task_id already exists"))
        if "forbidden" in prompt.lower():
            return self._error(_Outcome(400, 1301, "prompt did not pass the content safety check"))
        in_flight = sum(1 for t in self.tasks.values() if not t.finished)
        if self.concurrency_limit is not None and in_flight >= self.concurrency_limit:
            return self._error(_Outcome(429, 1303, "concurrent task limit exceeded"))
        now_ms = int(time.time() * 1000)
        task = SimTask(
            id=str(next(self._ids)),
            external_id=external,
            kind=kind,
            prompt=prompt,
            duration=duration,
            resolution=resolution,
            created=self.clock(),
            callback_url=options.get("callback_url"),
            fail_message="Video generation failed: internal render error" if "fail-render" in prompt else None,
            create_ms=now_ms,
            update_ms=now_ms,
        )
        self.tasks[task.id] = task
        log.info("task %s created (%s, %ss, %s)", task.id, kind, duration, resolution)
        if fault is not None:  # accept_then_error: the task exists, but the answer is lost
            return self._error(_Outcome(500, 5000, "internal error"))
        return self._envelope(self._record(task))

    # --- query and states --------------------------------------------------------------------------------

    async def _query(self, request: web.Request) -> web.Response:
        _, refused, _ = await self._enter(request, "query")
        if refused is not None:
            return refused
        task_ids = [i for i in request.query.get("task_ids", "").split(",") if i]
        external_ids = [i for i in request.query.get("external_task_ids", "").split(",") if i]
        if len(task_ids) + len(external_ids) > MAX_IDS:
            return self._error(_Outcome(400, 1201, f"at most {MAX_IDS} ids per query"))
        found = [self.tasks[i] for i in task_ids if i in self.tasks]
        found += [t for e in external_ids for t in self.tasks.values() if t.external_id == e]
        for task in found:
            self._advance(task)
        records = [self._record(task) for task in found]
        if self.rewrite is not None:
            records = [self.rewrite(record) for record in records]
        return self._envelope(records)

    def _advance(self, task: SimTask) -> None:
        """Move a task along by the clock: submitted, then processing, then its end."""
        if task.finished:
            return
        age = self.clock() - task.created
        processing_after = self.processing_after if self.processing_after is not None else self.render_seconds / 4
        if not self.hold and age >= self.render_seconds:
            self._end(task)
        elif (self.hold or age >= processing_after) and task.status == "submitted":
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
        if task.callback_url:
            sending = asyncio.get_running_loop().create_task(self._callback(task.callback_url, self._record(task)))
            self._callbacks.add(sending)
            sending.add_done_callback(self._callbacks.discard)

    async def _callback(self, url: str, record: dict[str, Any]) -> None:
        body = json.dumps(record).encode()
        headers = {"Content-Type": "application/json"}
        if self.callback_secret is not None:
            webhook_id, timestamp = f"msg_{uuid.uuid4().hex}", int(time.time())
            headers.update({"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
                            "webhook-signature": sign(self.callback_secret, webhook_id, timestamp, body)})  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("callback to %s failed: %s", url, exc)

    def _record(self, task: SimTask) -> dict[str, Any]:
        """The task as the reference shows it (no external id: the provider's page does not echo it)."""
        record: dict[str, Any] = {
            "id": task.id,
            "status": task.status,
            "message": task.message,
            "create_time": task.create_ms,
            "update_time": task.update_ms,
        }
        if task.status == "succeeded":
            base = f"http://127.0.0.1:{self._port}"
            amount = RATES[task.resolution] * task.duration
            record["outputs"] = [
                {
                    "type": "video",
                    "id": task.output_id,
                    "url": f"{base}/videos/{task.output_id}.mp4",
                    "duration": f"{task.duration + 0.041:.3f}",
                }
            ]
            record["billing"] = [{"amount": _plain(amount), "charge_type": "unit", "package_type": "video"}]
        return record

    # --- the CDN -----------------------------------------------------------------------------------------

    async def _video(self, request: web.Request) -> web.StreamResponse:
        output_id = request.match_info["output_id"]
        if not any(t.output_id == output_id for t in self.tasks.values()) or self.video_fault == "404":
            raise web.HTTPNotFound()
        if self.video_fault == "html":
            return web.Response(text=HTML_PAGE, content_type="text/html")
        data = self.video_bytes if self.video_bytes is not None else sample_video()
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(data)
        await response.prepare(request)
        view = memoryview(data)
        for start in range(0, len(data), 256 * 1024):
            await response.write(view[start : start + 256 * 1024])
        await response.write_eof()
        return response


def _plain(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _check_first_frame(url: str) -> str | None:
    """What the provider says about a first frame: an http(s) URL, or raw Base64 of a JPEG or PNG within limits."""
    if url.startswith(("http://", "https://")):
        return None
    if url.startswith("data:"):
        return "first_frame must be a URL or raw Base64 without a data: prefix"
    try:
        data = base64.b64decode(url, validate=True)
    except (binascii.Error, ValueError):
        return "first_frame is neither a URL nor valid Base64"
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError):
        return "first_frame is not a readable image"
    if image.format not in ("JPEG", "PNG"):
        return f"first_frame format {image.format} is not supported (jpg, jpeg, png)"
    width, height = image.size
    if min(width, height) < 300:
        return "first_frame must be at least 300 px on each side"
    if max(width, height) / min(width, height) > 2.5:
        return "first_frame aspect ratio must be between 1:2.5 and 2.5:1"
    return None


def sample_video() -> bytes:
    """The small real mp4 the simulator serves (3 s, H.264 and AAC)."""
    return (resources.files("bot") / "assets" / "sample.mp4").read_bytes()


async def run_forever(host: str, port: int, api_key: str, endpoint_path: str, render_seconds: float) -> int:
    """Serve until interrupted, printing how to point the bot at it."""
    simulator = KlingSimulator(api_key=api_key, endpoint_path=endpoint_path, render_seconds=render_seconds)
    await simulator.start(host, port)
    print(
        f"Kling simulator on http://{host}:{simulator._port}/v1/ai; point the bot at it with:\n"
        f"  KLING_BASE_URL=http://{host}:{simulator._port}/v1/ai KLING_API_KEY={api_key} "
        f"KLING_ENDPOINT_PATH={endpoint_path}\n"
        "Prompts containing 'forbidden' are refused; 'fail-render' fails after rendering. Ctrl-C stops it.",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.close()
    return 0

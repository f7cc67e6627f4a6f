"""A Kling 3.0 turbo simulator that speaks the provider's API as docs/provider-api.md describes it.

The tests use it over 127.0.0.1; `python -m bot simulate` lets a server owner try the bot without a key or cost.
Faults can be switched on (`fail_next`) to prove the client copes with what the real gateway does. Videos are the
sample mp4, or with `task_videos` one small clip per task whose last frame has a colour of that task's own.

Nobody has proven that Cloudsway's gateway behaves as its page says, so `GatewayVariant` (`sim.variant`, or
`--variant KEY=VALUE` on the command line) switches on one plausible difference each; every default follows the page:
- query_lists=accept|refuse|partial: the page lists `task_ids=a,b,c`; refuse: several ids in one parameter get
  400/1201; partial: several ids answer only the first task that exists, the rest dropped silently.
- query_cap=N: the page names no limit (Kling's is 20, the default); more than N ids in one query get 400/1201.
- statuses=page|legacy: the page says `succeeded`/`failed`; legacy says `succeed`/`fail` (Kling's older endpoints).
- numbers=true: the page has string ids, durations, amounts and integer times; this flips each to the other type.
- first_frame=any|url_only|base64_only: the page shows an http(s) URL, Kling also takes raw Base64; url_only
  refuses Base64, base64_only refuses URLs (a gateway that cannot fetch outside URLs), each with 400/1201.
- fetch_urls=true|false: the provider must fetch a first-frame URL; true fetches it at submit and refuses what is
  not a readable JPEG/PNG within limits (the reserved example.com/.org/.net, *.example and *.invalid hosts are
  taken unchecked, as placeholders); false takes every URL unchecked.
- callbacks=page|native: the page's callbacks would carry its task record; native carries Kling's own
  `task_id`/`task_status`/`task_status_msg`/`external_task_id`/`task_result.videos` shape.
- late_submit=S: a submit checks its request, answers a proxy's 504 HTML page, and its task appears (and starts
  rendering) S seconds later by the simulator's clock; the page answers at once.
- dedupe_external_ids=false: Kling refuses a repeated external_task_id (400/1201); false makes a second task
  (both render and bill) and a query by that external id answers all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import io
import itertools
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from importlib import resources
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import aiohttp
import av
from aiohttp import web
from PIL import Image

from bot.provider.callbacks import sign
from bot.serving.server import serve

log = logging.getLogger(__name__)

MODEL = "kling-3.0-turbo"
MAX_IDS = 20
RATES = {"720p": Decimal("0.8"), "1080p": Decimal("1.0")}
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # Kling's safe size for a first frame
FAULTS = frozenset(
    {"rate_limit", "concurrency", "server_error", "unavailable", "html", "slow", "credits", "auth",
     "accept_then_error", "bad_json", "malformed", "empty"}
)  # fmt: skip
TICK_SECONDS = 0.02
CHUNK_BYTES = 64 * 1024
HTML_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>" \
    "<hr><center>nginx</center></body></html>"  # fmt: skip
TIMEOUT_PAGE = "<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway Time-out</h1>" \
    "</center><hr><center>nginx</center></body></html>"  # fmt: skip
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
# Hosts reserved for examples (RFC 2606): nothing can be fetched there, so tests use them as placeholder URLs.
PLACEHOLDER_HOSTS = ("example.com", "example.net", "example.org")
PLACEHOLDER_TLDS = (".example", ".invalid")
VARIANT_HELP = (
    "make the gateway differ from its page (repeatable); see bot/provider/simulator.py's docstring for the keys"
)
LEGACY_STATUSES = {"succeeded": "succeed", "failed": "fail"}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass
class GatewayVariant:
    """How this simulated gateway differs from the provider's page; every default follows the page."""

    query_lists: Literal["accept", "refuse", "partial"] = "accept"
    query_cap: int = MAX_IDS
    statuses: Literal["page", "legacy"] = "page"
    numbers: bool = False
    first_frame: Literal["any", "url_only", "base64_only"] = "any"
    fetch_urls: bool = True
    callbacks: Literal["page", "native"] = "page"
    late_submit: float | None = None
    dedupe_external_ids: bool = True

    @classmethod
    def parse(cls, items: Sequence[str]) -> GatewayVariant:
        """Build a variant from `KEY=VALUE` items; raises ValueError naming the first bad item."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for item in items:
            key, equals, raw = (part.strip() for part in item.partition("="))
            if not equals or key not in hints:
                raise ValueError(f"bad gateway variant {item!r}: expected KEY=VALUE, KEY one of {', '.join(hints)}")
            try:
                values[key] = _parse_value(hints[key], raw)
            except ValueError as exc:
                raise ValueError(f"bad gateway variant {item!r}: {exc}") from None
        return cls(**values)


def _describe(variant: GatewayVariant) -> str:
    """The switches that differ from the page, as `KEY=VALUE, ...`, or that none does."""
    shown = []
    for f in fields(variant):
        value = getattr(variant, f.name)
        if value != f.default:  # written back as `--variant` takes it: true, 40, partial
            text = f"{value:g}" if isinstance(value, float) else str(value)
            shown.append(f"{f.name}={text.lower()}")
    return ", ".join(shown) or "none (the provider's page)"


def _parse_value(hint: Any, raw: str) -> Any:
    if get_origin(hint) is Literal:
        if raw not in get_args(hint):
            raise ValueError(f"expected one of {', '.join(get_args(hint))}")
        return raw
    if hint is bool:
        if raw.lower() not in (*_TRUE, *_FALSE):
            raise ValueError("expected true or false")
        return raw.lower() in _TRUE
    if hint is int:
        number = int(raw)
        if number < 1:
            raise ValueError("expected a whole number of at least 1")
        return number
    if raw.lower() in ("", "none", "off"):  # late_submit: float | None
        return None
    seconds = float(raw)
    if not 0 <= seconds < float("inf"):
        raise ValueError("expected seconds, 0 or more")
    return seconds


@dataclass
class RecordedRequest:
    """One API request as the simulator received it (the video downloads are not recorded)."""

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


class _Answer(Exception):
    """Ends a request early with this response: a refusal or a fault."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _envelope(
    data: Any, code: int = 0, message: str = "SUCCEED", status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"code": code, "message": message, "data": data, "request_id": str(uuid.uuid4())}
    return web.json_response(body, status=status, headers=headers)


def _refuse(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> _Answer:
    return _Answer(_envelope(None, code, message, status, headers))


def _bad(message: str) -> _Answer:
    return _refuse(400, 1201, message)


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
    ) -> None:
        self.api_key = api_key
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
        self.clip_maker: Callable[[str], bytes] = task_video  # makes a task's clip from its id (`task_videos`)
        self._task_clips: dict[str, bytes] = {}  # task id -> its clip, made once
        self.callback_secret: str | None = None  # signs callbacks (Standard Webhooks) when set
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, SimTask] = {}
        # The most tasks unfinished at once, as of each creation (a task finishes here before anyone can hear of it).
        self.most_at_once = 0
        self.fetched_urls: list[str] = []  # first-frame URLs the simulator fetched (variant.fetch_urls)
        self._pending: list[SimTask] = []  # late submits: each appears when the clock reaches its `created`
        self._faults: list[_Fault] = []
        self._ids = itertools.count(901930004609634393)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._origin = "http://127.0.0.1:0"
        self._callbacks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._middleware])
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
        if fault not in FAULTS or on not in ("submit", "query", "any"):
            raise ValueError(f"unknown fault {fault!r} or request kind {on!r}")
        self._faults.append(_Fault(fault, on, times, retry_after, delay))

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
            body, headers = await _json_body(request), dict(request.headers)
            self.requests.append(RecordedRequest(request.method, request.path, dict(request.query), body, headers))
        try:
            return await handler(request)
        except _Answer as answer:
            return answer.response
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            if not api:
                raise
            return _envelope(None, 1203, f"no such API: {request.method} {request.path}", 404)

    async def _enter(self, request: web.Request, kind: str) -> tuple[Any, _Fault | None]:
        """Check the key and the endpoint and apply a pending fault; returns the body and a fault the route plays."""
        fault = self._take_fault(kind)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            fault = None
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise _refuse(401, 1000, "authentication failed: no Authorization header")
        if auth != f"Bearer {self.api_key}":
            raise _refuse(401, 1002, "authentication failed: invalid access key")
        if request.match_info["endpoint"] != self.endpoint_path:
            raise _refuse(404, 1203, "endpoint not found")
        if fault is None or fault.kind == "malformed" or (fault.kind, kind) == ("accept_then_error", "submit"):
            return await _json_body(request), fault
        raise _Answer(_fault_response(fault))

    def _take_fault(self, kind: str) -> _Fault | None:
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
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _bad("prompt is required")
        if len(prompt) > 3072:
            raise _bad("prompt must be at most 3072 characters")
        aspect = _section(body, "settings").get("aspect_ratio", "16:9")
        if aspect not in ASPECT_RATIOS:
            raise _bad(f"aspect_ratio {aspect!r} is not supported (16:9, 9:16, 1:1)")
        return self._create(body, "text", prompt, fault)

    async def _submit_image(self, request: web.Request) -> web.Response:
        body, fault = await self._enter(request, "submit")
        if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
            raise _bad("contents is required")
        if "aspect_ratio" in _section(body, "settings"):
            raise _bad("aspect_ratio is not accepted for image to video: the first frame sets it")
        frames, texts = [], []
        for item in body["contents"]:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "first_frame":
                frames.append(item.get("url"))
            elif kind == "prompt":
                texts.append(item.get("text"))
            else:
                raise _bad(f"contents type {kind!r} is not supported (first_frame, prompt)")
        if len(frames) != 1 or not isinstance(frames[0], str):
            raise _bad("contents must hold exactly one first_frame with a url")
        if len(texts) > 1 or not all(isinstance(text, str) for text in texts):
            raise _bad("contents may hold one prompt, whose text is a string")
        prompt = texts[0] if texts else ""
        if len(prompt) > 2500:
            raise _bad("prompt must be at most 2500 characters")
        await self._check_first_frame(frames[0])
        return self._create(body, "image", prompt, fault)

    async def _check_first_frame(self, url: str) -> None:
        """Refuse a first frame as the variant's gateway would: by its form, then (a URL) by what it serves."""
        is_url = url.startswith(("http://", "https://"))
        if is_url and self.variant.first_frame == "base64_only":
            raise _bad("first_frame must be raw Base64: this gateway does not fetch URLs")
        if not is_url and self.variant.first_frame == "url_only":
            raise _bad("first_frame url must be an http(s) URL")
        if not is_url:
            _check_image(_decode_base64(url))
        elif self.variant.fetch_urls and not _placeholder(url):
            _check_image(await self._fetch(url))

    async def _fetch(self, url: str) -> bytes:
        """The first frame's bytes, fetched now as the provider must; refused if it cannot be had."""
        self.fetched_urls.append(url)
        try:
            async with (
                aiohttp.ClientSession(timeout=FETCH_TIMEOUT) as session,
                session.get(url) as response,
            ):
                if response.status != 200:
                    raise _bad(f"first_frame url could not be fetched (HTTP {response.status})")
                data = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:  # enough to refuse it; the rest need not come
                        break
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _bad(f"first_frame url could not be fetched ({type(exc).__name__})") from None
        return bytes(data)

    def _create(self, body: dict[str, Any], kind: str, prompt: str, fault: _Fault | None) -> web.Response:
        settings, options = _section(body, "settings"), _section(body, "options")
        duration, resolution = settings.get("duration", 5), settings.get("resolution", "720p")
        if not isinstance(duration, int) or isinstance(duration, bool) or not 3 <= duration <= 15:
            raise _bad("duration must be an integer from 3 to 15")
        if resolution not in RATES:
            raise _bad(f"resolution {resolution!r} is not supported (720p, 1080p)")
        external, callback_url = options.get("external_task_id") or None, options.get("callback_url") or None
        if external is not None and not isinstance(external, str):
            raise _bad("external_task_id must be a string")
        if callback_url is not None and not str(callback_url).startswith(("http://", "https://")):
            raise _bad("callback_url must be an http(s) URL")
        if external and self.variant.dedupe_external_ids and self.tasks_for(external):
            raise _bad("external_task_id already exists")
        if "forbidden" in prompt.lower():
            raise _refuse(400, 1301, "prompt did not pass the content safety check")
        if self.concurrency_limit is not None:
            for other in list(self.tasks.values()):
                self._advance(other)
            if sum(not t.finished for t in self.tasks.values()) >= self.concurrency_limit:
                raise _refuse(429, 1303, "concurrent task limit exceeded")
        if fault is not None and fault.kind == "malformed":  # an answer the client cannot use: no task id
            return _envelope({"status": "submitted", "message": ""})
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
        )
        if late is not None:  # the proxy gave up waiting; the request still reaches the provider, later
            self._pending.append(task)
            log.info("task %s will appear in %gs (late submit)", task.id, late)
            return web.Response(status=504, text=TIMEOUT_PAGE, content_type="text/html")
        self.tasks[task.id] = task
        self.most_at_once = max(self.most_at_once, sum(not t.finished for t in self.tasks.values()))
        log.info("task %s created (%s, %ss, %s)", task.id, kind, duration, resolution)
        if fault is not None:  # accept_then_error: the task exists, but the answer is lost
            raise _refuse(500, 5000, "internal error")
        return _envelope(self._record(task, self._origin))

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
            return _envelope([{"unexpected": True}, {"id": None, "status": 7}])
        task_ids = [i for i in request.query.get("task_ids", "").split(",") if i]
        external_ids = [i for i in request.query.get("external_task_ids", "").split(",") if i]
        cap, lists = self.variant.query_cap, self.variant.query_lists
        if len(task_ids) + len(external_ids) > cap:
            raise _bad(f"at most {cap} ids per query")
        if lists == "refuse" and max(len(task_ids), len(external_ids)) > 1:
            raise _bad("invalid parameter: task_ids and external_task_ids take one id each")
        self._appear()
        found = [self.tasks[i] for i in task_ids if i in self.tasks]
        found += [t for e in external_ids for t in self.tasks.values() if t.external_id == e]
        if lists == "partial":  # answered as if only the first id had been asked for
            found = found[:1]
        for task in found:
            self._advance(task)
        origin = f"{request.scheme}://{request.host}"
        records = [self._record(task, origin) for task in found]
        if self.rewrite is not None:
            records = [self.rewrite(record) for record in records]
        return _envelope(records)

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
            sending = asyncio.get_running_loop().create_task(
                self._callback(task.callback_url, self._callback_body(task))
            )
            self._callbacks.add(sending)
            sending.add_done_callback(self._callbacks.discard)

    def _callback_body(self, task: SimTask) -> dict[str, Any]:
        """What a callback carries: the page's task record, or Kling's native callback shape."""
        record = self._record(task, self._origin)
        if self.variant.callbacks == "page":
            return record
        body: dict[str, Any] = {
            "task_id": record["id"],
            "task_status": record["status"],
            "task_status_msg": record["message"],
            "external_task_id": task.external_id or "",
        }
        if "outputs" in record:
            videos = [{"id": out["id"], "url": out["url"], "duration": out["duration"]} for out in record["outputs"]]
            body["task_result"] = {"videos": videos}
        return body

    async def _callback(self, url: str, record: dict[str, Any]) -> None:
        body = json.dumps(record).encode()
        headers = {"Content-Type": "application/json"}
        if self.callback_secret is not None:
            webhook_id, timestamp = f"msg_{uuid.uuid4().hex}", int(time.time())
            headers.update({"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
                            "webhook-signature": sign(self.callback_secret, webhook_id, timestamp, body)})  # fmt: skip
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.post(url, data=body, headers=headers) as response,
            ):
                await response.read()
        except Exception as exc:  # fire and forget: a callback that fails is only logged
            log.warning("callback to %s failed: %r", url, exc)

    def _record(self, task: SimTask, origin: str) -> dict[str, Any]:
        """The task as the reference shows it (no external id: the provider's page does not echo it)."""
        numbers = self.variant.numbers
        status = LEGACY_STATUSES.get(task.status, task.status) if self.variant.statuses == "legacy" else task.status
        record: dict[str, Any] = {
            "id": int(task.id) if numbers else task.id,
            "status": status,
            "message": task.message,
            "create_time": str(task.create_ms) if numbers else task.create_ms,
            "update_time": str(task.update_ms) if numbers else task.update_ms,
        }
        if task.status == "succeeded":
            url, duration = f"{origin}/videos/{task.output_id}.mp4", f"{task.duration + 0.041:.3f}"
            output_id, amount = task.output_id, _plain(RATES[task.resolution] * task.duration)
            record["outputs"] = [
                {"type": "video", "id": int(output_id) if numbers else output_id, "url": url,
                 "duration": float(duration) if numbers else duration}
            ]  # fmt: skip
            record["billing"] = [
                {"amount": float(amount) if numbers else amount, "charge_type": "unit", "package_type": "video"}
            ]
        return record

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
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(data)
        await response.prepare(request)
        view = memoryview(data)
        step = 1 if trickle else CHUNK_BYTES
        for start in range(0, len(data), step):
            if trickle:
                await asyncio.sleep(trickle)
            await response.write(view[start : start + step])
        await response.write_eof()
        return response

    def hold_videos(self) -> None:
        """Video downloads from now on wait, unanswered, until `release_videos` (a CDN that stalls)."""
        self._videos_flow.clear()

    def release_videos(self) -> None:
        """Answer the held video downloads, and the next ones at once."""
        self._videos_flow.set()

    async def _video_data(self, output_id: str) -> bytes:
        if not self.task_videos:
            return sample_video()
        task_id = next(t.id for t in self.tasks.values() if t.output_id == output_id)
        if task_id not in self._task_clips:  # encoded off the loop: the bot may share it
            self._task_clips[task_id] = await asyncio.to_thread(self.clip_maker, task_id)
        return self._task_clips[task_id]


async def _json_body(request: web.Request) -> Any:
    """The request's JSON, or None (aiohttp keeps the bytes, so asking twice is cheap)."""
    if not request.body_exists:
        return None
    try:
        return await request.json()
    except ValueError:
        return None


def _fault_response(fault: _Fault) -> web.Response:
    if fault.kind == "empty":
        return web.Response(status=200, body=b"", content_type="application/json")
    if fault.kind in ("html", "bad_json"):
        return web.Response(status=502 if fault.kind == "html" else 200, text=HTML_PAGE, content_type="text/html")
    retry = {"Retry-After": f"{fault.retry_after if fault.retry_after is not None else 1:g}"}
    status, code, message, headers = {
        "rate_limit": (429, 1302, "request rate limit exceeded", retry),
        "concurrency": (429, 1303, "concurrent task limit exceeded", {}),
        "server_error": (500, 5000, "internal error", {}),
        "accept_then_error": (500, 5000, "internal error", {}),  # on a query: just a lost answer
        "unavailable": (503, 5001, "service under maintenance", {}),
        "credits": (429, 1101, "resource pack exhausted", {}),
        "auth": (401, 1002, "authentication failed: invalid access key", {}),
    }[fault.kind]
    return _refuse(status, code, message, headers).response


def _section(body: dict[str, Any], name: str) -> dict[str, Any]:
    """`settings` or `options`: absent is empty; anything but an object is refused."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{name} must be an object")
    return value


def _plain(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _placeholder(url: str) -> bool:
    """Whether the URL's host is reserved for examples, so that fetching it can only fail."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    return host.endswith(PLACEHOLDER_TLDS) or any(host == h or host.endswith("." + h) for h in PLACEHOLDER_HOSTS)


def _decode_base64(text: str) -> bytes:
    """A first frame given as raw Base64 (not a data: URL), decoded, or refused."""
    if text.startswith("data:"):
        raise _bad("first_frame must be a URL or raw Base64 without a data: prefix")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("first_frame is neither a URL nor valid Base64") from None


def _check_image(data: bytes) -> None:
    """Refuse what the provider refuses: anything but a JPEG or PNG within Kling's size and shape limits."""
    if len(data) > MAX_IMAGE_BYTES:
        raise _bad("first_frame must be at most 10 MB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
            image.verify()
    except Exception:  # Pillow raises many types for a broken file; all mean the same here
        raise _bad("first_frame is not a readable image") from None
    if kind not in ("JPEG", "MPO", "PNG"):  # MPO: a camera's JPEG with extra frames
        raise _bad(f"first_frame format {kind} is not supported (jpg, jpeg, png)")
    if min(width, height) < 300:
        raise _bad("first_frame must be at least 300 px on each side")
    if max(width, height) / min(width, height) > 2.5:
        raise _bad("first_frame aspect ratio must be between 1:2.5 and 2.5:1")


def task_colour(seed: str) -> tuple[int, int, int]:
    """The colour of the last frame of the simulator's video for this task id (mid-range, so YUV keeps it)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return (40 + digest[0] % 176, 40 + digest[1] % 176, 40 + digest[2] % 176)


def make_clip(colours: Sequence[tuple[int, int, int]], *, width: int = 480, height: int = 320, fps: int = 8) -> bytes:
    """A small H.264 mp4 with one plain frame per colour, at `fps` frames a second."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for colour in colours:
            frame = av.VideoFrame.from_image(Image.new("RGB", (width, height), colour))  # type: ignore[no-untyped-call]
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def task_video(seed: str) -> bytes:
    """The simulator's video for one task (`task_videos`): one second at 480x320 whose final frame has
    `task_colour(seed)` and every frame before it a colour 88 away in each channel, so a first frame is never
    mistaken for a last."""
    last = task_colour(seed)
    before = (_away(last[0]), _away(last[1]), _away(last[2]))
    return make_clip([before] * 7 + [last])


def _away(channel: int) -> int:
    return channel + 88 if channel < 128 else channel - 88


def sample_video() -> bytes:
    """The small real mp4 the simulator serves (3 s, 320x180, H.264 and AAC)."""
    return (resources.files("bot") / "assets" / "sample.mp4").read_bytes()


async def run_forever(
    host: str, port: int, api_key: str, endpoint_path: str, render_seconds: float, variant: Sequence[str] = ()
) -> int:
    """Serve until interrupted, printing how to point the bot at it; `variant` holds `KEY=VALUE` switches."""
    try:
        parsed = GatewayVariant.parse(variant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    simulator = KlingSimulator(
        api_key=api_key, endpoint_path=endpoint_path, render_seconds=render_seconds, variant=parsed
    )
    simulator.task_videos = True  # so a video can be continued from its own last frame (480x320, one second)
    await simulator.start(host, port)
    print(
        f"Kling simulator on {simulator._origin}/v1/ai (endpoint path {endpoint_path!r}); point the bot at it with:\n"
        f"  KLING_BASE_URL={simulator._origin}/v1/ai KLING_API_KEY={api_key} KLING_ENDPOINT_PATH={endpoint_path}\n"
        f"Gateway variant: {_describe(parsed)}.\n"
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
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE", help=VARIANT_HELP)
    args = parser.parse_args(argv)
    run = run_forever(args.host, args.port, args.api_key, args.endpoint_path, args.render_seconds, args.variant)
    try:
        return asyncio.run(run)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""Client of the Kling 3.0 turbo API as served by Cloudsway's gateway (see docs/provider-api.md)."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from bot.serving import metrics

log = logging.getLogger(__name__)

MODEL = "kling-3.0-turbo"
TEXT_TO_VIDEO = f"/kling/videos/text-to-video/{MODEL}"
IMAGE_TO_VIDEO = f"/kling/videos/image-to-video/{MODEL}"
TASKS = "/kling/tasks"
MAX_IDS_PER_QUERY = 20  # the provider's cap, checked against production

MAX_RETRY_AFTER = 60.0  # a gateway's Retry-After beyond this is not believed
QUERY_CONCURRENCY = 4  # queries of one poll in flight at once (POLL_CONCURRENCY)

# A request body with more text than this (a first frame in Base64) is encoded in a worker thread, piece by piece;
# a smaller one costs less than the hop to a thread.
LARGE_BODY_CHARS = 64 * 1024
JSON_PIECE = 64 * 1024  # characters of one long string escaped per json.dumps call
# One thread encodes every large body (see bot/media/images.py: the GIL serialises encodes; fewer malloc arenas).
_encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="json")

KNOWN_STATUSES = frozenset({"submitted", "processing", "succeeded", "failed"})
# Kling's older endpoints (and perhaps the gateway) spell the two ends differently.
STATUS_SPELLINGS = {"succeed": "succeeded", "success": "succeeded", "fail": "failed"}
_unknown_statuses: set[str] = set()  # logged once each per process


def _digits_as_str(value: object) -> object:
    # Ids are strings of digits; a gateway that sends them as JSON numbers must not lose precision to floats.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _number_as_text(value: object) -> object:
    # The page writes durations and amounts as strings; a gateway may send numbers.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _status(value: object) -> object:
    if isinstance(value, str):
        value = value.strip().lower()
        return STATUS_SPELLINGS.get(value, value)
    return value


def _or_none(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    # An odd optional field becomes "unknown" instead of dropping the whole task record.
    try:
        return handler(value)
    except ValidationError:
        return None


IdStr = Annotated[str, BeforeValidator(_digits_as_str)]
Text = Annotated[str, BeforeValidator(_number_as_text)]
Status = Annotated[str, BeforeValidator(_status)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class KlingOutput(_Model):
    """One result of a finished task; `url` is a signed CDN link that expires."""

    type: str = "video"
    id: IdStr = ""
    url: str
    duration: Annotated[Text | None, WrapValidator(_or_none)] = None

    @property
    def seconds(self) -> float | None:
        """The video's length in seconds, if the provider gave a readable one."""
        try:
            return float(self.duration) if self.duration is not None else None
        except ValueError:
            return None


class KlingBilling(_Model):
    """What the provider charged; `amount` is a decimal string (or a number, from some gateways)."""

    amount: Text
    charge_type: Annotated[Text | None, WrapValidator(_or_none)] = None
    package_type: Annotated[Text | None, WrapValidator(_or_none)] = None


class KlingTask(_Model):
    """A task as the provider reports it; the status is kept even when we do not know it."""

    id: IdStr
    status: Status
    message: Annotated[Text | None, WrapValidator(_or_none)] = ""
    outputs: Annotated[list[KlingOutput] | None, WrapValidator(_or_none)] = None
    billing: Annotated[list[KlingBilling] | None, WrapValidator(_or_none)] = None
    create_time: Annotated[int | None, WrapValidator(_or_none)] = None
    update_time: Annotated[int | None, WrapValidator(_or_none)] = None

    @property
    def video(self) -> KlingOutput | None:
        """The first video output, if any."""
        return next((o for o in self.outputs or () if o.type == "video" and o.url), None)

    @property
    def billed_amount(self) -> str | None:
        """The charged amount as the provider wrote it, when billing is known."""
        return self.billing[0].amount if self.billing else None


class Envelope(_Model):
    """Every answer: `code` 0 means success whatever the HTTP status says, and vice versa."""

    code: int
    message: str | None = ""
    data: Any = None
    request_id: str | None = None


class KlingError(Exception):
    """A failed call; `message` is the provider's own words where it gave any."""

    def __init__(
        self, message: str, *, code: int | None = None, status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        where = ", ".join(
            part
            for part in (f"HTTP {self.status}" if self.status else "", f"code {self.code}" if self.code else "")
            if part
        )
        return f"{self.message} ({where})" if where else self.message


class KlingAuthError(KlingError):
    """The key was refused (or the IP is not allowed): the operator must act; never retried."""


class KlingAccountError(KlingError):
    """The account is in arrears, out of credits or without access to the model: the operator must act."""


class KlingBadRequest(KlingError):
    """The provider refused the parameters; its message says why. Not retried."""


class KlingContentPolicy(KlingError):
    """The prompt or image broke the platform's content policy: the member must change it."""


class KlingRateLimited(KlingError):
    """Too many requests (1302) or too many tasks at once (1303); `retry_after` is in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class KlingUnavailable(KlingError):
    """Server trouble: 5xx, codes 5000-5002, a body that is not the API's JSON, a time-out, no connection."""


class KlingNotSent(KlingUnavailable):
    """The circuit breaker is open: the call was not sent at all."""


class KlingSubmitUncertain(KlingUnavailable):
    """A submit got no usable answer and the task is not visible yet: it may still appear (gateways create
    tasks late and may not refuse a repeated external id), so it must not be sent again for a while."""


def classify(
    status: int, code: int | None, message: str, *, request_id: str | None = None, retry_after: float | None = None
) -> KlingError:
    """Turn an HTTP status and the envelope's code into the error the rest of the code acts on."""
    kwargs: dict[str, Any] = {"code": code, "status": status, "request_id": request_id}
    if code is not None:
        if 1000 <= code <= 1004 or code == 1304:
            return KlingAuthError(message or "authentication failed", **kwargs)
        if 1100 <= code <= 1103:
            return KlingAccountError(message or "account unavailable", **kwargs)
        if 1200 <= code <= 1299:
            return KlingBadRequest(message or "bad request", **kwargs)
        if code in (1300, 1301):
            return KlingContentPolicy(message or "refused by the content policy", **kwargs)
        if code in (1302, 1303):
            return KlingRateLimited(message or "rate limited", retry_after=retry_after, **kwargs)
        if 5000 <= code <= 5999:
            return KlingUnavailable(message or "server error", **kwargs)
    if status == 401:
        return KlingAuthError(message or "authentication failed", **kwargs)
    if status == 429:
        return KlingRateLimited(message or "rate limited", retry_after=retry_after, **kwargs)
    if 400 <= status < 500:
        return KlingBadRequest(message or f"request refused (HTTP {status})", **kwargs)
    return KlingUnavailable(message or f"server error (HTTP {status})", **kwargs)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class CircuitBreaker:
    """Stops calling a provider that keeps failing: after `threshold` server errors in a row it opens for
    `cooldown` seconds, then lets one probe through at a time; a success closes it."""

    def __init__(
        self, threshold: int = 10, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def is_open(self) -> bool:
        """True while calls are refused without being sent (a probe may be due)."""
        return self.opened_at is not None

    @property
    def refusing(self) -> bool:
        """True while open and no probe is due: callers should not even try."""
        if self.opened_at is None:
            return False
        return self.probing or self.clock() - self.opened_at < self.cooldown

    def allow(self) -> bool:
        """May a call go out now? When open, only one probe after the cooldown."""
        if self.opened_at is None:
            return True
        if self.probing or self.clock() - self.opened_at < self.cooldown:
            return False
        self.probing = True
        return True

    def release(self) -> None:
        """A call ended without telling us anything (it was cancelled): let the next probe go."""
        self.probing = False

    def record(self, ok: bool) -> None:
        """Note how a call that went out ended."""
        self.probing = False
        if ok:
            if self.opened_at is not None:
                log.info("the video service answers again; circuit closed")
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.failures >= self.threshold:
            if self.opened_at is None:
                log.error("the video service failed %d times in a row; circuit open", self.failures)
            self.opened_at = self.clock()


class KlingClient:
    """Submit and query Kling tasks over one shared `aiohttp.ClientSession`, retrying what is safe to retry."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        root_url: str,
        api_key: SecretStr,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        breaker: CircuitBreaker | None = None,
        query_concurrency: int = QUERY_CONCURRENCY,
    ) -> None:
        self.breaker = breaker or CircuitBreaker()
        self.query_concurrency = max(1, query_concurrency)
        # The provider asked us to slow down (a rate limit): no request of this client goes out before this
        # (time.monotonic), whichever task asked, so queries in flight together wait together.
        self._quiet_until = 0.0
        self._session = session
        self._root = root_url.rstrip("/")
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(10.0, timeout))
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sleep = sleep
        # What this gateway turned out to accept, learned at run time (see docs/provider-api.md).
        self.batch_size = MAX_IDS_PER_QUERY
        self._lists_proven = False  # a full list was answered in full: lists may go out together
        self._announced_sizes: set[int] = set()
        self.frame_form: Literal["base64", "url"] = "base64"

    def __repr__(self) -> str:
        return f"KlingClient(root_url={self._root!r})"

    async def submit_text(
        self,
        prompt: str,
        *,
        duration: int,
        resolution: str,
        aspect_ratio: str,
        external_task_id: str,
        callback_url: str | None = None,
    ) -> KlingTask:
        """Start a text-to-video task; the body follows the reference's example."""
        body = {
            "prompt": prompt,
            "settings": {"resolution": resolution, "aspect_ratio": aspect_ratio, "duration": duration},
            "options": self._options(external_task_id, callback_url),
        }
        return await self._submit(TEXT_TO_VIDEO, body, external_task_id)

    async def submit_image(
        self,
        prompt: str | None,
        *,
        base64_frame: str | None = None,
        url_frame: str | None = None,
        duration: int,
        resolution: str,
        external_task_id: str,
        callback_url: str | None = None,
    ) -> KlingTask:
        """Start an image-to-video task from raw Base64 (no `data:` prefix) or an http(s) URL of the first frame.

        Given both, a form the gateway refuses is retried once in the other, and the one that works is kept."""
        forms: list[tuple[Literal["base64", "url"], str | None]] = [("base64", base64_frame), ("url", url_frame)]
        if self.frame_form == "url":
            forms.reverse()
        candidates = [(form, frame) for form, frame in forms if frame]
        if not candidates:
            raise ValueError("an image task needs a first frame")
        for number, (form, frame) in enumerate(candidates, start=1):
            contents: list[dict[str, str]] = [{"type": "first_frame", "url": frame}]
            if prompt:
                contents.append({"type": "prompt", "text": prompt})
            body = {
                "contents": contents,
                "settings": {"resolution": resolution, "duration": duration},
                "options": self._options(external_task_id, callback_url),
            }
            try:
                task = await self._submit(IMAGE_TO_VIDEO, body, external_task_id)
            except KlingBadRequest as exc:
                if number == len(candidates):
                    raise
                log.warning("the gateway refused a %s first frame (%s); trying the other form", form, exc)
                continue
            if self.frame_form != form:
                log.info("first frames go to this gateway as %s from now on", form)
                self.frame_form = form
            return task
        raise AssertionError("unreachable: the last form either returned or raised")

    async def query(self, task_ids: Sequence[str]) -> list[KlingTask]:
        """Look tasks up by the provider's ids, as many per request as the gateway answers; unknown ids are absent.

        Starts at the documented 20 ids; a gateway that refuses lists or drops ids from them teaches a smaller
        batch, kept for the life of the process. Up to `query_concurrency` lists are asked at once."""
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, KlingTask] = {}
        if not self._lists_proven:  # the first list alone: a gateway that takes fewer ids teaches it once
            first, ids = ids[: self.batch_size], ids[self.batch_size :]
            await self._query_batches(first, found)
        lists = [ids[start : start + self.batch_size] for start in range(0, len(ids), self.batch_size)]
        answers = await self._ask_lists(lists)
        for chunk, answer in zip(lists, answers, strict=True):
            await self._take_answer(chunk, answer, found)  # one at a time: what they teach is learned in order
        return list(found.values())

    async def _ask_lists(self, lists: list[list[str]]) -> list[list[KlingTask] | KlingBadRequest]:
        """Each list's answer (or its refusal), asking up to `query_concurrency` at once; after a failure no new
        list is sent, and the first failure is raised (as one list after another would)."""
        answers: list[list[KlingTask] | KlingBadRequest] = [[] for _ in lists]
        pending = iter(enumerate(lists))
        failures: list[Exception] = []

        async def worker() -> None:
            for index, chunk in pending:
                if failures:
                    return
                try:
                    answers[index] = await self._try_list(chunk)
                except Exception as exc:  # raised below, once every worker has stopped
                    failures.append(exc)
                    return

        await asyncio.gather(*(worker() for _ in range(min(self.query_concurrency, len(lists)))))
        if failures:
            raise failures[0]
        return answers

    async def _try_list(self, chunk: list[str]) -> list[KlingTask] | KlingBadRequest:
        try:
            return await self._query_once("task_ids", chunk)
        except KlingBadRequest as exc:
            return exc

    async def _query_batches(self, ids: list[str], found: dict[str, KlingTask]) -> None:
        start = 0
        while start < len(ids):
            chunk = ids[start : start + self.batch_size]
            start += len(chunk)
            await self._take_answer(chunk, await self._try_list(chunk), found)

    async def _take_answer(
        self, chunk: list[str], answer: list[KlingTask] | KlingBadRequest, found: dict[str, KlingTask]
    ) -> None:
        """Keep one list's answer; a refused or partly answered list is asked again in smaller ones."""
        if isinstance(answer, KlingBadRequest):
            if len(chunk) == 1:
                # A gateway may refuse an id it does not know instead of leaving it out: then it is absent.
                log.info("query for task %s refused (%s); taking it as unknown", chunk[0], answer)
                return
            log.info("the gateway refused a list of %d ids (%s); asking fewer at a time", len(chunk), answer)
            self.batch_size = min(self.batch_size, len(chunk) // 2)
            self._lists_proven = False
            await self._query_batches(chunk, found)
            return
        found.update((task.id, task) for task in answer if task.id in chunk)
        missing = [i for i in chunk if i not in found]
        if missing and len(chunk) > 1:
            # Unknown ids, or a gateway that answers only part of a list: ask again in smaller batches.
            answered, size = len(found), self.batch_size
            self.batch_size = min(size, len(chunk) // 2)
            await self._query_batches(missing, found)
            if len(found) == answered:
                self.batch_size = size  # they were simply unknown: the list size was not the problem
            else:
                self._lists_proven = False
        elif self.batch_size < MAX_IDS_PER_QUERY and self.batch_size not in self._announced_sizes:
            self._announced_sizes.add(self.batch_size)
            log.warning("the gateway answers %d id(s) per query; using that from now on", self.batch_size)
        if not missing and len(chunk) == self.batch_size > 1:
            self._lists_proven = True

    async def find_external(self, external_task_id: str) -> KlingTask | None:
        """The task we submitted under our own id, or None if the provider does not know it (yet)."""
        try:
            found = await self._query_once("external_task_ids", [external_task_id])
        except KlingBadRequest as exc:
            log.info("lookup of external id %s refused (%s); taking it as unknown", external_task_id, exc)
            return None
        if len(found) > 1:
            # A gateway that does not deduplicate external ids: the oldest task is the one we keep.
            log.error("external id %s names %d tasks at the provider: %s", external_task_id, len(found),
                      ", ".join(t.id for t in found))  # fmt: skip
            found.sort(key=lambda task: (task.create_time or 0, task.id))
        return found[0] if found else None

    async def ask_once(self, task_ids: Sequence[str]) -> list[KlingTask]:
        """One query with exactly these ids, whatever the gateway was found to take (the preflight's probe)."""
        return await self._query_once("task_ids", task_ids)

    async def _query_once(self, kind: str, ids: Sequence[str]) -> list[KlingTask]:
        params = {"task_ids": "", "external_task_ids": ""} | {kind: ",".join(ids)}
        data = await self._with_retries(functools.partial(self._call, "GET", TASKS, params=params), "query")
        return _parse_tasks(data)

    async def check_auth(self) -> None:
        """One cheap authenticated call (a query for no known task); raises the typed error if it fails."""
        await self._call("GET", TASKS, params={"task_ids": "0", "external_task_ids": ""})

    @staticmethod
    def _options(external_task_id: str, callback_url: str | None) -> dict[str, Any]:
        options: dict[str, Any] = {"external_task_id": external_task_id, "watermark_info": {"enabled": False}}
        if callback_url:
            options["callback_url"] = callback_url
        return options

    async def _submit(self, path: str, body: dict[str, Any], external_task_id: str) -> KlingTask:
        """POST a new task. Retried on a rate limit; after server trouble, only once a query shows it is absent."""
        attempt, delay = 0, 0.0
        while True:
            await self._wait_quiet(delay)
            try:
                return _parse_task(await self._call("POST", path, json_body=body))
            except KlingRateLimited as exc:
                if attempt >= self._max_retries:
                    raise
                delay = self._slow_down(exc, self._delay(attempt, exc.retry_after))
            except KlingNotSent:
                raise
            except KlingUnavailable as exc:
                # The gateway may have created the task, or may create it late: never send it again from here.
                try:
                    existing = await self.find_external(external_task_id)
                except KlingError:
                    existing = None
                if existing is not None:
                    log.info("submit %s failed but the task exists as %s", external_task_id, existing.id)
                    return existing
                raise KlingSubmitUncertain(
                    f"the submit got no usable answer ({exc}); the task may still appear",
                    code=exc.code,
                    status=exc.status,
                ) from None
            except KlingBadRequest as exc:
                if exc.code != 1201:
                    raise
                # Refused, perhaps as a duplicate of our own id: then an earlier submit landed after all.
                existing = await self.find_external(external_task_id)
                if existing is None:
                    raise
                return existing
            attempt += 1
            log.warning("submit %s: retrying in %.1fs (attempt %d)", external_task_id, delay, attempt)

    async def _with_retries(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Run an idempotent call, retrying rate limits and server trouble with backoff and jitter."""
        attempt, delay = 0, 0.0
        while True:
            await self._wait_quiet(delay)
            try:
                return await call()
            except (KlingRateLimited, KlingUnavailable) as exc:
                if attempt >= self._max_retries:
                    raise
                if isinstance(exc, KlingRateLimited):
                    delay = self._slow_down(exc, self._delay(attempt, exc.retry_after))
                else:
                    delay = self._delay(attempt, None)
                attempt += 1
                log.warning("%s failed (%s); retry %d in %.1fs", what, exc, attempt, delay)

    def _slow_down(self, exc: KlingRateLimited, delay: float) -> float:
        """A rate limit holds every request of this client for `delay` (a 1303 is about tasks, not requests:
        only the submit that met it waits). Returns `delay`."""
        if exc.code != 1303:
            self._quiet_until = max(self._quiet_until, time.monotonic() + delay)
        return delay

    async def _wait_quiet(self, delay: float) -> None:
        """Sleep `delay` (this call's own back-off), or longer while the provider asked every request to wait."""
        wait = max(delay, self._quiet_until - time.monotonic())
        if wait > 0:
            await self._sleep(wait)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self._backoff_cap, self._backoff_base * 2.0**attempt) * random.uniform(0.5, 1.0)
        return max(min(retry_after, MAX_RETRY_AFTER), backoff) if retry_after is not None else backoff

    async def _call(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> Any:
        """One HTTP exchange through the breaker: returns the envelope's `data`, or raises the typed error."""
        if not self.breaker.allow():
            raise KlingNotSent("the video service is failing; not calling it for a while")
        call = "query" if path == TASKS else path.split("/")[3]  # text-to-video or image-to-video
        try:
            body = await encode_body(json_body) if json_body is not None else None
            with metrics.API_SECONDS.labels(call).time():
                data = await self._exchange(method, path, params=params, body=body)
        except KlingError as exc:
            metrics.API_ERRORS.labels(str(exc.code or exc.status or "network")).inc()
            # A refusal is an answer: only server trouble counts against the provider.
            self.breaker.record(ok=not isinstance(exc, KlingUnavailable))
            raise
        except BaseException:
            self.breaker.release()  # cancelled: says nothing about the provider
            raise
        self.breaker.record(ok=True)
        return data

    async def _exchange(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | io.BytesIO | None = None,
    ) -> Any:
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Content-Type": "application/json",
        }
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, self._root + path, params=params, data=body, headers=headers, timeout=self._timeout
            ) as response:
                raw = await response.read()
                status, retry_after = response.status, _retry_after(response.headers)
        except TimeoutError:
            raise KlingUnavailable(f"no answer within {self._timeout.total:g}s") from None
        except aiohttp.ClientError as exc:
            raise KlingUnavailable(f"connection failed: {type(exc).__name__}") from None
        log.debug("%s %s -> %d in %.0f ms", method, path, status, (time.perf_counter() - started) * 1000)
        try:
            envelope = Envelope.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            if status >= 400:
                raise classify(status, None, "", retry_after=retry_after) from None
            raise KlingUnavailable(f"the API answered something that is not its JSON (HTTP {status})") from None
        if envelope.code != 0 or status >= 400:
            raise classify(
                status,
                envelope.code or None,
                envelope.message or "",
                request_id=envelope.request_id,
                retry_after=retry_after,
            )
        return envelope.data


async def encode_body(body: dict[str, Any]) -> bytes | io.BytesIO:
    """A request body as JSON: a large one (a first frame) in the encoder thread, a small one right here."""
    if _text_chars(body) <= LARGE_BODY_CHARS:
        return json.dumps(body).encode()
    # As a file, aiohttp sends it in 64 KB pieces as the socket takes them, instead of copying the rest of a
    # 13 MB body into the transport's buffer on the loop.
    return await asyncio.get_running_loop().run_in_executor(_encoder, encode_json, body)


def encode_json(value: Any) -> io.BytesIO:
    """What `json.dumps(value).encode()` gives, with long strings escaped piece by piece; run it in a thread."""
    # One json.dumps over a 13 MB string holds the GIL for tens of milliseconds, stalling the event loop even
    # from a thread; between pieces the loop gets its turn. JSON escapes each character alone, so pieces join.
    out = io.BytesIO()
    for piece in _json_pieces(value):
        out.write(piece.encode("ascii"))
    out.seek(0)
    return out


def _json_pieces(value: Any) -> Iterator[str]:
    if isinstance(value, str) and len(value) > JSON_PIECE:
        yield '"'
        for start in range(0, len(value), JSON_PIECE):
            yield json.dumps(value[start : start + JSON_PIECE])[1:-1]
        yield '"'
    elif isinstance(value, dict):
        yield "{"
        for number, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"request body keys must be strings, not {type(key).__name__}")
            yield (", " if number else "") + json.dumps(key) + ": "
            yield from _json_pieces(item)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for number, item in enumerate(value):
            if number:
                yield ", "
            yield from _json_pieces(item)
        yield "]"
    else:
        yield json.dumps(value)


def _text_chars(value: Any) -> int:
    """Roughly how long the JSON of a request body is: its strings dominate, numbers are counted as a few."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(key)) + _text_chars(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(_text_chars(item) for item in value)
    return 8


def _parse_task(data: Any) -> KlingTask:
    try:
        task = KlingTask.model_validate(data)
    except ValidationError as exc:
        raise KlingUnavailable(f"malformed task in the answer: {exc.error_count()} problem(s)") from None
    _note_status(task)
    return task


def _parse_tasks(data: Any) -> list[KlingTask]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise KlingUnavailable("malformed answer: the task list is not a list")
    tasks = []
    for item in data:
        try:
            tasks.append(_parse_task(item))
        except KlingUnavailable as exc:
            # One bad record must not hide the others; its job stays in flight and is asked about again.
            log.warning("skipping a task record: %s", exc)
    return tasks


def _note_status(task: KlingTask) -> None:
    if task.status not in KNOWN_STATUSES and task.status not in _unknown_statuses:
        _unknown_statuses.add(task.status)
        log.warning("task %s has a status we do not know: %r; such tasks are polled on", task.id, task.status)

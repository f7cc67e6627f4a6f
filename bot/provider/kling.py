"""Client of the Kling 3.0 turbo API as served by Cloudsway's gateway (see docs/provider-api.md).

Its typed errors are in `errors.py`, the lenient reading of its answers in `records.py`, and the JSON of its
request bodies in `encoding.py`."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import aiohttp
from pydantic import SecretStr, ValidationError

from bot.core.options import DEFAULT_MODEL, FRAMES, JobOptions, takes_frame
from bot.provider.encoding import encode_body
from bot.provider.errors import (
    KlingBadRequest,
    KlingError,
    KlingNotSent,
    KlingRateLimited,
    KlingSubmitUncertain,
    KlingUnavailable,
    classify,
)
from bot.provider.records import Envelope, KlingTask, parse_task, parse_tasks
from bot.serving import metrics

log = logging.getLogger(__name__)

TASKS = "/kling/tasks"
MAX_IDS_PER_QUERY = 20  # the provider's cap, checked against production

MAX_RETRY_AFTER = 60.0  # a gateway's Retry-After beyond this is not believed
QUERY_CONCURRENCY = 4  # queries of one poll in flight at once (POLL_CONCURRENCY)


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
        model: str = DEFAULT_MODEL,
    ) -> None:
        self.model = model  # the last part of the submit paths (KLING_MODEL); it decides which frames are sent
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
        # False once the gateway refused `settings.audio` (Kling's own field, not on its page): every later job is
        # sent without it, for the life of the process.
        self.takes_sound = True

    def refuses_sound(self, error: KlingError) -> None:
        """The gateway refused a body that differs from an accepted one only by `settings.audio`: remember it."""
        if self.takes_sound:
            log.warning("the gateway refused settings.audio (%s); jobs are sent without it from now on", error)
        self.takes_sound = False

    def __repr__(self) -> str:
        return f"KlingClient(root_url={self._root!r})"

    async def submit_text(
        self,
        prompt: str,
        *,
        options: JobOptions,
        external_task_id: str,
        callback_url: str | None = None,
    ) -> KlingTask:
        """Start a text-to-video task; the body follows the reference's example."""
        body = {
            "prompt": prompt,
            "settings": options.settings(),
            "options": self._options(external_task_id, callback_url),
        }
        return await self._submit(f"/kling/videos/text-to-video/{self.model}", body, external_task_id)

    async def submit_image(
        self,
        prompt: str | None,
        *,
        base64_frame: str | None = None,
        url_frame: str | None = None,
        end_frame: str | None = None,
        options: JobOptions,
        external_task_id: str,
        callback_url: str | None = None,
    ) -> KlingTask:
        """Start an image-to-video task from raw Base64 (no `data:` prefix) or an http(s) URL of the first frame,
        and the last frame's raw Base64 (`end_frame`) for a model that takes one.

        Given both forms of the first frame, a form the gateway refuses is retried once in the other, and the one
        that works is kept. A frame this model is not documented to take is refused here, before anything is sent."""
        if end_frame is not None and not takes_frame(self.model, "end_image"):
            raise KlingBadRequest(f"the model {self.model} takes no last frame")
        forms: list[tuple[Literal["base64", "url"], str | None]] = [("base64", base64_frame), ("url", url_frame)]
        if self.frame_form == "url":
            forms.reverse()
        candidates = [(form, frame) for form, frame in forms if frame]
        if not candidates:
            raise ValueError("an image task needs a first frame")
        for number, (form, frame) in enumerate(candidates, start=1):
            frames = {"image": frame, "end_image": end_frame}
            contents = [{"type": f.content, "url": url} for f in FRAMES if (url := frames.get(f.name))]
            if prompt:
                contents.append({"type": "prompt", "text": prompt})
            body = {
                "contents": contents,
                "settings": options.settings(),
                "options": self._options(external_task_id, callback_url),
            }
            try:
                task = await self._submit(f"/kling/videos/image-to-video/{self.model}", body, external_task_id)
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
        by_id = {task.id: task for task in answer}
        if len(by_id) == len(chunk) and all(i in by_id for i in chunk):  # (the ids of a list are distinct)
            found.update(by_id)  # every id asked and no other (a tick's usual answer: no filtering to do)
            missing: list[str] = []
        else:
            asked = set(chunk)
            found.update((task_id, task) for task_id, task in by_id.items() if task_id in asked)
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
        return parse_tasks(data)

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
                return parse_task(await self._call("POST", path, json_body=body))
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

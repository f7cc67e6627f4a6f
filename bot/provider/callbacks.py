"""The provider's task callbacks: a hint to query a task at once, never trusted on its own.

With a secret, each callback must carry a valid Standard Webhooks signature (docs/provider-api.md):
HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{raw body}`, keyed with the Base64 secret after `whsec_`.
Without one (the default) anyone can send them, so the endpoint is cheap to refuse: a rate limit per client address,
and a task id of the provider's shape; what is left is a hint the poll loop looks up in bulk (cogs/poller.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from bot.serving import metrics
from bot.serving.server import serve

log = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 5 * 60
MAX_BODY_BYTES = 1024 * 1024
CALLBACK_PATH = "/kling/callback"
# The provider's task ids are strings of digits ("901930004609634393"); other Kling deployments use UUIDs or
# Base64url-like strings. Lenient for those, strict against garbage: no spaces, quotes or slashes, at most 64.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_CLIENTS = 10_000  # client addresses the rate limit remembers (the least recently seen is forgotten first)


class BadSignature(Exception):
    """The callback is unsigned, signed with another key, or too old or too new."""


def secret_key(secret: str) -> bytes:
    """The HMAC key: the Base64 part of a `whsec_...` secret (a bare Base64 secret is accepted too)."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("CALLBACK_SECRET is not a whsec_ Base64 secret") from None


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message (used by the simulator and the tests)."""
    digest = hmac.new(secret_key(secret), f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise BadSignature unless one of the signatures matches and the timestamp is within five minutes."""
    webhook_id = headers.get("webhook-id", "")
    try:
        timestamp = int(headers.get("webhook-timestamp", ""))
    except ValueError:
        raise BadSignature("missing or malformed webhook-timestamp") from None
    if not webhook_id:
        raise BadSignature("missing webhook-id")
    if abs(now - timestamp) > MAX_SKEW_SECONDS:
        raise BadSignature("stale or future webhook-timestamp")
    expected = sign(secret, webhook_id, timestamp, body)
    offered = headers.get("webhook-signature", "").split()
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise BadSignature("no matching signature")


def callback_task_id(body: bytes) -> str | None:
    """The task a callback names: `id` in the page's task record, `task_id` in Kling's native shape (either may
    sit inside a `data` envelope). Nothing else in it is used: the bot asks the provider itself."""
    try:
        record = json.loads(body)
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("data"), dict):
        record = record["data"]
    if not isinstance(record, dict):
        return None
    value = record.get("task_id", record.get("id"))
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def is_task_id(value: str) -> bool:
    """Whether `value` has the shape of a provider's task id."""
    return TASK_ID.fullmatch(value) is not None


class RateLimit:
    """A token bucket per client address: `burst` callbacks at once, then `rate` a second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address: (tokens, as of when)

    def allow(self, address: str) -> bool:
        """Take one token from the address's bucket; False when it is empty."""
        now = self.clock()
        tokens, then = self.buckets.pop(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        allowed = tokens >= 1.0
        self.buckets[address] = (tokens - 1.0 if allowed else tokens, now)
        if len(self.buckets) > MAX_CLIENTS:  # bounded memory: a forgotten address starts with a full bucket
            self.buckets.popitem(last=False)
        return allowed


def peer_address(request: web.Request) -> str:
    """The address of the connection's other end. Never a header such as X-Forwarded-For, which anyone can write:
    behind a reverse proxy this is the proxy's address, shared by every client."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return str(peer[0]) if peer else "unknown"


class CallbackServer:
    """A small aiohttp app that turns each valid callback into `on_hint(task_id)`."""

    def __init__(
        self,
        on_hint: Callable[[str], Awaitable[None]],
        *,
        secret: str | None = None,
        rate_limit: RateLimit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is not None:
            secret_key(secret)  # fail at start-up, not at the first callback
        self.on_hint = on_hint
        self.secret = secret
        self.rate_limit = rate_limit
        self.clock = clock
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_post(CALLBACK_PATH, self.receive)
        self._runner: web.AppRunner | None = None

    async def receive(self, request: web.Request) -> web.Response:
        """Check the rate, the signature and the task id's shape, and ask for that task soon; the body's state is not
        used. Refusals are counted, not logged one by one: a flood would fill the log."""
        if self.rate_limit is not None and not self.rate_limit.allow(peer_address(request)):
            metrics.CALLBACKS.labels("rate_limited").inc()
            return web.Response(status=429, text="too many callbacks", headers={"Retry-After": "1"})
        body = await request.read()
        if self.secret is not None:
            try:
                verify(self.secret, request.headers, body, self.clock())
            except BadSignature as exc:
                log.debug("refused a callback from %s: %s", peer_address(request), exc)
                metrics.CALLBACKS.labels("bad_signature").inc()
                return web.Response(status=401, text="bad signature")
        task_id = callback_task_id(body)
        if task_id is None or not is_task_id(task_id):
            metrics.CALLBACKS.labels("bad_id").inc()
            return web.Response(status=400, text="no task id of the provider's shape")
        metrics.CALLBACKS.labels("hint").inc()
        await self.on_hint(task_id)
        return web.Response(status=204)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (0 picks a free one)."""
        self._runner, bound = await serve(self.app, host, port)
        return bound

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

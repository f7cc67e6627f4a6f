"""The provider's task callbacks: a hint to query a task at once, never trusted on its own.

With a secret, each callback must carry a valid Standard Webhooks signature (docs/provider-api.md):
HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{raw body}`, keyed with the Base64 secret after `whsec_`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from bot.serving import serve

log = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 5 * 60
MAX_BODY_BYTES = 1024 * 1024
CALLBACK_PATH = "/kling/callback"


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


class CallbackServer:
    """A small aiohttp app that turns each valid callback into `on_hint(task_id)`."""

    def __init__(
        self,
        on_hint: Callable[[str], Awaitable[None]],
        *,
        secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is not None:
            secret_key(secret)  # fail at start-up, not at the first callback
        self.on_hint = on_hint
        self.secret = secret
        self.clock = clock
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_post(CALLBACK_PATH, self.receive)
        self._runner: web.AppRunner | None = None

    async def receive(self, request: web.Request) -> web.Response:
        """Check the signature, pick the task id, and ask for that task now; the body's state is not used."""
        body = await request.read()
        if self.secret is not None:
            try:
                verify(self.secret, request.headers, body, self.clock())
            except BadSignature as exc:
                log.warning("refused a callback from %s: %s", request.remote, exc)
                return web.Response(status=401, text="bad signature")
        task_id = callback_task_id(body)
        if task_id is None:
            log.warning("a callback without a task id from %s", request.remote)
            return web.Response(status=400, text="no task id")
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

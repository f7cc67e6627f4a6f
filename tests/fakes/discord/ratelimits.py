"""Discord's rate limits as the fake enforces them (opt-in: `FakeDiscord(rate_limits=True)`): a global limit,
per-route buckets, the X-RateLimit-* headers and 429s (counted in `rate_limited`)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.discord.wire import json_response
from tests.fakes.discord.world import World


@dataclass(frozen=True)
class Limit:
    """At most `requests` in a window of `seconds` (a fixed window from its first request, as Discord's)."""

    requests: int
    seconds: float


# Rate limits (opt-in: FakeDiscord(rate_limits=True)). Discord documents the global limit (50 requests per second
# per bot token; interaction callbacks and the interaction webhook are not bound by it) and tells per-route limits
# only in response headers, so the route figures are what Discord answers today where known, else a guess.
GLOBAL_LIMIT = Limit(50, 1.0)
ROUTE_LIMITS = {
    "POST /channels/{channel_id}/messages": Limit(5, 5.0),  # X-RateLimit-Limit 5, Reset-After 5, per channel
    "PATCH /channels/{channel_id}/messages/{id}": Limit(5, 5.0),  # edits: answered as creation
    "DELETE /channels/{channel_id}/messages/{id}": Limit(5, 1.0),
    "POST /channels/{channel_id}/messages/{id}/threads": Limit(10, 10.0),  # a guess: thread creation is tighter
    "POST /channels/{channel_id}/threads": Limit(10, 10.0),
    "POST /webhooks/{webhook_id}/{token}": Limit(5, 2.0),  # webhooks: 5 per 2 s per webhook
    "PATCH /webhooks/{webhook_id}/{token}/messages/{id}": Limit(5, 2.0),
}
DEFAULT_LIMIT = Limit(10, 1.0)  # every other route, per its major parameters
GLOBAL_EXEMPT = ("/interactions/", "/webhooks/")  # interaction callbacks and followups
MAJOR = ("channels", "guilds", "webhooks", "interactions")  # a top-level id keeps its own bucket


def rate_limit_route(method: str, path: str) -> tuple[str, str]:
    """(route, major parameters): ids after channels/guilds/webhooks/interactions (and a webhook's or
    interaction's token) are kept as the major parameters; every other id becomes {id}."""
    parts = path.strip("/").split("/")
    route, major = [], []
    for index, part in enumerate(parts):
        previous = parts[index - 1] if index else ""
        if previous in MAJOR and part.isdigit():
            route.append("{" + previous[:-1] + "_id}")
            major.append(part)
        elif index == 2 and parts[0] in ("webhooks", "interactions"):
            route.append("{token}")
            major.append(part)
        elif part.isdigit() or part == "@original":
            route.append("{id}")
        else:
            route.append(part)
    return f"{method} /{'/'.join(route)}", "/".join(major)


class RateLimits(World):
    """The limits in force and the windows counted so far; they may be switched on or off at any time."""

    def __init__(self, *, rate_limits: bool = False, **options: Any) -> None:
        super().__init__(**options)
        # Off by default (no headers, nothing refused).
        self.rate_limits = rate_limits
        self.global_limit = GLOBAL_LIMIT
        self.route_limits = dict(ROUTE_LIMITS)
        self.default_limit = DEFAULT_LIMIT
        self.rate_limited: list[tuple[str, bool]] = []  # (route, global) of every 429 answered
        self._windows: dict[tuple[str, str], list[float]] = {}  # (route, major) -> [window start, count]
        self._global_window = [0.0, 0.0]

    def reset_rate_limits(self) -> None:
        """Forget the counts so far: every bucket, and the global limit, start a new window."""
        self._windows.clear()
        self._global_window[:] = [0.0, 0.0]

    def _take(self, method: str, path: str) -> tuple[web.Response | None, dict[str, str]]:
        """Count a request against the global limit and its route's bucket: (a 429 or None, the headers to send)."""
        now = time.perf_counter()
        route, major = rate_limit_route(method, path)
        limit = self.route_limits.get(route, self.default_limit)
        window = self._windows.setdefault((route, major), [now, 0])
        if now >= window[0] + limit.seconds:
            window[:] = [now, 0]
        exempt = path.startswith(GLOBAL_EXEMPT)
        if not exempt and now >= self._global_window[0] + self.global_limit.seconds:
            self._global_window[:] = [now, 0]
        over_global = not exempt and self._global_window[1] >= self.global_limit.requests
        over_route = window[1] >= limit.requests
        if not (over_global or over_route):
            window[1] += 1
            if not exempt:
                self._global_window[1] += 1
        reset_after = max(0.0, window[0] + limit.seconds - now)
        headers = {
            "X-RateLimit-Limit": str(limit.requests),
            "X-RateLimit-Remaining": str(int(limit.requests - window[1])),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": hashlib.sha1(route.encode()).hexdigest()[:16],  # opaque, shared by the route
        }
        if not (over_global or over_route):
            return None, headers
        retry_after = self._global_window[0] + self.global_limit.seconds - now if over_global else reset_after
        self.rate_limited.append((route, over_global))
        headers |= {
            "X-RateLimit-Scope": "global" if over_global else "user",
            "Retry-After": f"{max(retry_after, 0.001):.3f}",
            "Via": "1.1 google",  # discord.py takes a 429 without it for a Cloudflare ban
        }
        if over_global:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": round(retry_after, 3), "global": over_global}
        response = json_response(body, 429)
        response.headers.update(headers)
        return response, headers

"""What the fake Discord's parts share: the request it recorded, Discord's way of refusing one, JSON answers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = "application/json"  # exactly: discord.py fails on "application/json; charset=utf-8"
MiB = 1024 * 1024
UNKNOWN_CHANNEL = (404, 10003, "Unknown Channel")
UNKNOWN_MESSAGE = (404, 10008, "Unknown Message")
MISSING_PERMISSIONS = (403, 50013, "Missing Permissions")
WRONG_CHANNEL_TYPE = (400, 50024, "Cannot execute action on this channel type")
MISSING_ACCESS = (403, 50001, "Missing Access")  # a channel of a server the bot is not in
# Discord's cap on follow-ups of an interaction a user install answers in a server the bot is not in.
FOLLOWUP_LIMIT = 5
TOO_MANY_FOLLOWUPS = (400, 40094, "This interaction has hit the maximum number of follow up messages")
Files = list[tuple[str, bytes]]


class Refused(Exception):
    """Discord's answer to a request it refuses: (HTTP status, JSON error code, message)."""


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


@dataclass
class Recorded:
    """One REST request the fake received (multipart: `json` is the parsed payload_json)."""

    method: str
    path: str
    json: Any
    files: list[tuple[str, bytes]]
    query: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.perf_counter)  # when it arrived
    status: int = 0  # the answer's HTTP status, once answered
    authorization: str = field(default="", repr=False)  # the Authorization header (a token: never shown)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=JSON)


def error_response(status: int, code: int, message: str) -> web.Response:
    return json_response({"message": message, "code": code}, status)

"""A protocol-level fake of Discord: REST, the gateway websocket and the attachment CDN, on 127.0.0.1.

It runs all of discord.py's real code and enforces what real Discord
enforces and the bot depends on: permissions, upload limits, no threads in forums or threads, deleted channels,
message nonces, the first followup after a defer replacing the loading message. With `rate_limits=True` (or the
attribute set later) it also enforces Discord's rate limits: a global limit, per-route buckets, the X-RateLimit-*
headers and 429s (counted in `rate_limited`); every recorded request carries its arrival time and status.

    async with running_fake() as fake, running_bot(bot, fake):
        interaction = await fake.send_slash("ping", [], subcommand="pong")
        await interaction.wait_response()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import discord
import yarl
from aiohttp import BodyPartReader, WSMsgType, web

from bot.serving.server import serve

JSON = "application/json"  # exactly: discord.py fails on "application/json; charset=utf-8"
MiB = 1024 * 1024
FILESIZE_LIMITS = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}  # by guild premium tier, as discord.py
NONCE_SECONDS = 5 * 60  # how long Discord remembers an enforced nonce ("a few minutes")
THREADS = (10, 11, 12)
EPHEMERAL, LOADING = 64, 128
P = discord.Permissions
MEMBER_PERMISSIONS = P(
    view_channel=True,
    send_messages=True,
    read_message_history=True,
    use_application_commands=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    attach_files=True,
    embed_links=True,
)
BOT_PERMISSIONS = P(MEMBER_PERMISSIONS.value & ~P(use_application_commands=True).value)
MODERATOR_PERMISSIONS = P(manage_guild=True, manage_messages=True)
UNKNOWN_CHANNEL = (404, 10003, "Unknown Channel")
UNKNOWN_MESSAGE = (404, 10008, "Unknown Message")
MISSING_PERMISSIONS = (403, 50013, "Missing Permissions")
WRONG_CHANNEL_TYPE = (400, 50024, "Cannot execute action on this channel type")
Files = list[tuple[str, bytes]]


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


# Guild fields only GUILD_CREATE carries; GET /guilds/{id} leaves them out.
GATEWAY_ONLY = ("members", "channels", "threads", "voice_states", "presences", "joined_at", "large", "member_count")


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


@dataclass
class Interaction:
    """One interaction the fake sent, and what the bot answered."""

    id: str
    token: str
    payload: dict[str, Any]
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # the interaction responses, as received
    messages: list[dict[str, Any]] = field(default_factory=list)  # @original first (once it exists), then followups
    followups: list[dict[str, Any]] = field(default_factory=list)  # messages sent through the webhook
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at: float = field(default_factory=time.perf_counter)  # when the gateway event went out
    sent_to: list[tuple[int, int]] = field(default_factory=list)  # the shard of each session it went to
    first_answer_at: float | None = None  # when the bot's first callback arrived
    last_answer_at: float | None = None  # when the member last saw an answer (a message, not a "thinking" defer)

    @property
    def responses(self) -> list[dict[str, Any]]:
        return self.callbacks

    @property
    def deferred(self) -> bool:
        return any(c["type"] in (5, 6) for c in self.callbacks)

    @property
    def modal(self) -> dict[str, Any] | None:
        return next((c["data"] for c in self.callbacks if c["type"] == 9), None)

    @property
    def original(self) -> dict[str, Any] | None:
        """The @original message, with every edit applied (None before it exists)."""
        return self.messages[0] if self.messages else None

    @property
    def content(self) -> str | None:
        return None if self.original is None else self.original["content"]

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return [] if self.original is None else self.original["embeds"]

    def texts(self) -> list[str]:
        return [m["content"] for m in self.messages]

    def ephemeral(self, index: int = -1) -> bool:
        """Whether message `index` (default: the latest) carries the ephemeral flag (64)."""
        return bool(self.messages[index]["flags"] & EPHEMERAL)

    async def wait_response(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Wait for the bot's first answer; returns the first callback (or the first followup if none)."""
        await asyncio.wait_for(self.answered.wait(), timeout)
        return self.callbacks[0] if self.callbacks else self.followups[0]


class FakeDiscord:
    """One guild with members, roles and channels (more with `add_guild`); a bot logs in with `token`.

    Sharding, as Discord does it: GET /gateway/bot recommends `shards`; a connection that IDENTIFYs with
    `shard: [id, count]` is sent only the guilds of its shard, (guild_id >> 22) % count == id, and their events;
    one without `shard` (or with [0, 1]) gets every guild."""

    def __init__(
        self, *, filesize_limit: int | None = None, premium_tier: int = 0, rate_limits: bool = False, shards: int = 1
    ) -> None:
        self._ids = itertools.count(1_300_000_000_000_000_000)
        self.token = "fake-bot-token"
        self.application_id = self.snowflake()
        self.bot_user = self._user("video-bot", bot=True)
        self.guild_id = self.snowflake()
        self.shard_count = shards  # what GET /gateway/bot recommends
        self.guild_names = {self.guild_id: "Test server"}  # every guild, the first one `guild_id`
        self.identified_shards: list[tuple[int, int]] = []  # (id, count) of each IDENTIFY, in order
        self.premium_tier = premium_tier
        self.filesize_limit = filesize_limit or FILESIZE_LIMITS[premium_tier]  # what uploads are checked against
        self.requests: list[Recorded] = []
        self.unexpected: list[str] = []  # "METHOD /path" of every request no route matched
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}  # per channel (threads are channels), oldest first
        self.deleted_channels: set[str] = set()
        self.dm_channels: dict[str, str] = {}  # direct-message channel id -> the user's id
        self.closed_dms: set[str] = set()  # user ids whose direct messages refuse the bot (403, 50007)
        self.interactions: dict[str, Interaction] = {}
        self.files: dict[str, bytes] = {}  # CDN: attachment id -> bytes
        # CDN downloads being served now and the most at once; while `cdn_gate` is set but not open, they wait on it.
        self.cdn_in_flight = 0
        self.cdn_peak = 0
        self.cdn_gate: asyncio.Event | None = None
        self.bot_permissions: dict[str, int] = {}  # per channel, overriding BOT_PERMISSIONS
        self.commands: dict[str | None, list[dict[str, Any]]] = {}  # as last synced, by guild id (None: global)
        self.bot_roles: list[str] = []  # role ids the bot member has (besides @everyone)
        # When True, GUILD_CREATE also shows `bot_permissions` as the bot's member overwrites, so the bot's cache
        # (`channel.permissions_for(guild.me)`) knows them; set it before the bot starts.
        self.bot_overwrites = False
        self.identified = asyncio.Event()  # a bot IDENTIFYed and was sent READY and GUILD_CREATE
        self.resumes = 0
        # Rate limits: off by default (no headers, nothing refused); may be switched on or off at any time.
        self.rate_limits = rate_limits
        self.global_limit = GLOBAL_LIMIT
        self.route_limits = dict(ROUTE_LIMITS)
        self.default_limit = DEFAULT_LIMIT
        self.rate_limited: list[tuple[str, bool]] = []  # (route, global) of every 429 answered
        self._windows: dict[tuple[str, str], list[float]] = {}  # (route, major) -> [window start, count]
        self._global_window = [0.0, 0.0]
        self._faults: list[tuple[str, re.Pattern[str], int, int, str, list[int]]] = []
        self._delays: list[tuple[str, re.Pattern[str], float, list[int]]] = []
        self._nonces: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        # False: a repeated enforced nonce is posted again, as Discord does once it forgot the nonce (minutes later),
        # so only the bot's own fencing can keep a video from being posted twice.
        self.dedupe_nonces = True
        self._sockets: list[web.WebSocketResponse] = []  # identified or resumed sessions
        self._shard: dict[web.WebSocketResponse, tuple[int, int]] = {}  # each session's [id, count]
        self._session_shards: dict[str, tuple[int, int]] = {}  # session id -> shard, for RESUME
        self._connections: set[web.WebSocketResponse] = set()
        self._history: list[dict[str, Any]] = []  # dispatched events, replayed on RESUME
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self.moderator_role = self.snowflake()
        self.roles: list[dict[str, Any]] = [
            {"id": self.guild_id, "name": "@everyone", "position": 0, "permissions": str(MEMBER_PERMISSIONS.value)},
            {
                "id": self.moderator_role,
                "name": "Moderator",
                "position": 1,
                "permissions": str((MEMBER_PERMISSIONS | MODERATOR_PERMISSIONS).value),
            },
        ]
        for role in self.roles:
            role.update(color=0, hoist=False, managed=False, mentionable=False, flags=0)
        self.users = {name: self._user(name) for name in ("alice", "bob", "mod")}
        self.member_roles = {"alice": [], "bob": [], "mod": [self.moderator_role]}
        # Languages: each member's Discord client language (interaction.locale) and the server's preferred one.
        self.locales: dict[str, str] = {}  # member name -> locale, "en-US" when missing
        self.preferred_locale = "en-US"
        self.general = self.add_channel("general", 0)
        self.forum = self.add_channel("showcase", 15)
        self.forum_post = self.add_channel("my forum post", 11, parent=self.forum)
        self.log_channel = self.add_channel("mod-log", 0)
        self.app = web.Application(client_max_size=200 * MiB)
        self.app.router.add_get("/gateway", self._gateway)
        self.app.router.add_get("/attachments/{attachment}/{filename}", self._cdn)
        self.app.router.add_get("/cdn/{attachment}/{filename}", self._cdn)
        self.app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- world --------------------------------------------------------------------------------------------

    def snowflake(self) -> str:
        return str(next(self._ids))

    @property
    def bot_user_id(self) -> str:
        return str(self.bot_user["id"])

    def _user(self, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": self.snowflake(),
            "username": name,
            "discriminator": "0",
            "global_name": name,
            "avatar": None,
            "bot": bot,
        }

    def add_channel(self, name: str, kind: int, *, parent: str | None = None, guild: str | None = None) -> str:
        channel_id = self.snowflake()
        channel: dict[str, Any] = {
            "id": channel_id,
            "type": kind,
            "guild_id": guild or self.guild_id,
            "name": name,
            "position": len(self.channels),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": parent,
            "rate_limit_per_user": 0,
            "flags": 0,
            "topic": None,
            "last_message_id": None,
        }
        if kind == 15:
            channel.update(
                available_tags=[], default_reaction_emoji=None, default_sort_order=None, default_forum_layout=0
            )
        if kind in THREADS:
            channel.update(self._thread_fields(self.users["alice"]["id"], 1440))
        self.channels[channel_id] = channel
        self.messages[channel_id] = []
        return channel_id

    @staticmethod
    def _thread_fields(owner_id: str, archive_minutes: int) -> dict[str, Any]:
        return {
            "owner_id": owner_id,
            "message_count": 0,
            "member_count": 1,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": archive_minutes,
                "archive_timestamp": now_iso(),
                "locked": False,
            },
        }

    def add_guild(self, name: str, *, shard: int | None = None) -> str:
        """Another guild with the same members and a text channel `{name}-general`; with `shard`, one whose id
        falls on that shard of `shard_count`. Returns its id."""
        block = max(int(g) >> 22 for g in self.guild_names) + 1  # ids above every snowflake made so far
        while shard is not None and block % self.shard_count != shard:
            block += 1
        guild_id = str(block << 22)
        self.guild_names[guild_id] = name
        self.add_channel(f"{name}-general", 0, guild=guild_id)
        return guild_id

    def shard_of(self, guild_id: str) -> int:
        """The shard a guild belongs to, as Discord computes it."""
        return (int(guild_id) >> 22) % self.shard_count

    def text_channel(self, guild_id: str) -> str:
        """A guild's first text channel (`general` in the first guild)."""
        return next(c["id"] for c in self.channels.values() if c["guild_id"] == guild_id and c["type"] == 0)

    def add_user(self, name: str, *, roles: Sequence[str] = ()) -> dict[str, Any]:
        """Another member (of every guild); returns the user."""
        self.users[name], self.member_roles[name] = self._user(name), list(roles)
        return self.users[name]

    def guild_roles(self, guild_id: str) -> list[dict[str, Any]]:
        """The first guild's roles; another guild has only its @everyone (same permissions)."""
        if guild_id == self.guild_id:
            return self.roles
        return [self.roles[0] | {"id": guild_id}]

    def channel_id(self, ref: str) -> str:
        """A channel's id, given its id or its name ("general")."""
        if ref in self.channels or ref in self.deleted_channels:
            return ref
        return str(next(c["id"] for c in self.channels.values() if c["name"] == ref))

    def member(self, name: str) -> dict[str, Any]:
        return {
            "user": self.users[name],
            "roles": self.member_roles[name],
            "joined_at": now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
        }

    def permissions_of(self, name: str) -> int:
        value = int(self.roles[0]["permissions"])
        for role in self.roles:
            if role["id"] in self.member_roles[name]:
                value |= int(role["permissions"])
        return value

    def bot_permissions_in(self, channel_id: str) -> int:
        channel = self.channels.get(channel_id, {})
        parent = channel.get("parent_id") or ""
        if channel_id in self.bot_permissions or parent in self.bot_permissions:
            return self.bot_permissions.get(channel_id, self.bot_permissions.get(parent, 0))
        # Otherwise BOT_PERMISSIONS and the bot's roles, then the channel's overwrites in Discord's order:
        # @everyone, the bot's roles combined, the bot member (threads: the parent's overwrites).
        source = self.channels.get(parent, channel) if channel.get("type") in THREADS else channel
        value = BOT_PERMISSIONS.value
        for role in self.roles:
            if role["id"] in self.bot_roles:
                value |= int(role["permissions"])
        permissions = P(value)
        overwrites = source.get("permission_overwrites", [])
        steps = [[o for o in overwrites if o["id"] == self.guild_id and o["type"] == 0]]
        steps += [[o for o in overwrites if o["id"] in self.bot_roles and o["type"] == 0]]
        steps += [[o for o in overwrites if o["id"] == self.bot_user_id and o["type"] == 1]]
        for step in steps:
            allow = deny = 0
            for overwrite in step:
                allow, deny = allow | int(overwrite["allow"]), deny | int(overwrite["deny"])
            permissions.handle_overwrite(allow, deny)
        return permissions.value

    def add_role(self, name: str, permissions: int = 0) -> str:
        """A new role (give it to the bot with `bot_roles.append`); returns its id."""
        role_id = self.snowflake()
        self.roles.append(
            {"id": role_id, "name": name, "position": len(self.roles), "permissions": str(permissions), "color": 0,
             "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        )  # fmt: skip
        return role_id

    def add_overwrite(self, channel: str, target: str, *, allow: int = 0, deny: int = 0) -> None:
        """A permission overwrite on a channel (by id or name) for a role id (the guild's id: @everyone) or a user
        id. Overwrites for @everyone and the bot also decide what the fake lets the bot do there."""
        kind = 1 if target in {u["id"] for u in [*self.users.values(), self.bot_user]} else 0
        overwrite = {"id": target, "type": kind, "allow": str(allow), "deny": str(deny)}
        self.channels[self.channel_id(channel)]["permission_overwrites"].append(overwrite)

    def rest_channel(self, channel_id: str) -> dict[str, Any]:
        """A channel as GET /guilds/{id}/channels shows it: a `bot_permissions` entry becomes what it would be
        on Discord, an overwrite for the bot member that allows exactly those permissions and denies the rest."""
        channel = dict(self.channels[channel_id])
        if channel_id in self.bot_permissions:
            allowed = self.bot_permissions[channel_id]
            others = [o for o in channel["permission_overwrites"] if o["id"] != self.bot_user_id]
            mine = {"id": self.bot_user_id, "type": 1, "allow": str(allowed), "deny": str(P.all().value & ~allowed)}
            channel["permission_overwrites"] = [*others, mine]
        return channel

    def bot_member(self) -> dict[str, Any]:
        return {
            "user": self.bot_user,
            "roles": list(self.bot_roles),
            "joined_at": now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
        }

    def guild_payload(self, guild_id: str | None = None) -> dict[str, Any]:
        guild_id = guild_id or self.guild_id
        members = [self.member(n) for n in self.users] + [self.bot_member()]
        mine = [c for c in self.channels.values() if c["guild_id"] == guild_id]
        threads = [c for c in mine if c["type"] in THREADS]
        return {
            "id": guild_id,
            "name": self.guild_names[guild_id],
            "icon": None,
            "owner_id": self.users["mod"]["id"],
            "roles": self.guild_roles(guild_id),
            "emojis": [],
            "stickers": [],
            "features": [],
            "member_count": len(members),
            "members": members,
            "channels": [self._with_bot_overwrite(c) for c in mine if c not in threads],
            "threads": threads,
            "voice_states": [],
            "presences": [],
            "large": False,
            "unavailable": False,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": self.preferred_locale,
            "verification_level": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "afk_timeout": 300,
            "system_channel_id": None,
            "joined_at": now_iso(),
        }

    def _with_bot_overwrite(self, channel: dict[str, Any]) -> dict[str, Any]:
        if not self.bot_overwrites or channel["id"] not in self.bot_permissions:
            return channel
        allow = self.bot_permissions[channel["id"]]
        deny = P.all().value & ~allow
        mine = {"id": self.bot_user_id, "type": 1, "allow": str(allow), "deny": str(deny)}
        return channel | {"permission_overwrites": [*channel["permission_overwrites"], mine]}

    async def set_bot_permissions(self, channel_id: str, value: int) -> None:
        """Change the bot's permissions in a channel as a moderator would: Discord sends CHANNEL_UPDATE."""
        self.bot_permissions[channel_id] = value
        channel = self._with_bot_overwrite(self.channels[channel_id])
        await self.dispatch("CHANNEL_UPDATE", channel | {"guild_id": self.guild_id})

    def add_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Store bytes on the CDN; returns the attachment payload (for `data.resolved.attachments`)."""
        attachment_id = self.snowflake()
        self.files[attachment_id] = data
        url = f"http://127.0.0.1:{self.port}/attachments/{attachment_id}/{filename}"
        payload: dict[str, Any] = {
            "id": attachment_id,
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "width": width,
            "height": height,
        }
        if content_type:
            payload["content_type"] = content_type
        return payload

    def post_message(
        self,
        channel_id: str,
        author: dict[str, Any],
        content: str = "",
        attachments: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """Put a message in a channel as if a member had posted it (attachments from `add_attachment`)."""
        message = self._message(channel_id, {"content": content}, [], author=author)
        message["attachments"] = list(attachments)
        self.messages[channel_id].append(message)
        return message

    def find_message(self, message_id: str) -> dict[str, Any]:
        return next(m for ms in self.messages.values() for m in ms if m["id"] == message_id)

    def close_dms(self, name: str) -> None:
        """The member allows no direct messages from the bot: Discord opens the channel but refuses each message."""
        self.closed_dms.add(self.users[name]["id"])

    def dms(self, name: str) -> list[dict[str, Any]]:
        """The direct messages the bot sent this member, oldest first."""
        user_id = self.users[name]["id"]
        return [m for c, u in self.dm_channels.items() if u == user_id for m in self.messages[c]]

    def delete_channel(self, channel_id: str) -> None:
        """The channel (or thread) disappears: later requests to it answer 404 Unknown Channel (10003)."""
        self.deleted_channels.add(channel_id)
        self.channels.pop(channel_id, None)

    def fail_next(
        self, method: str, path_regex: str, status: int, code: int = 0, message: str = "", times: int = 1
    ) -> None:
        """The next `times` requests matching answer this Discord error (checked before anything else)."""
        self._faults.append((method, re.compile(path_regex), status, code, message, [times]))

    @property
    def connected(self) -> bool:
        """True while a bot holds an open gateway connection."""
        return any(not socket.closed for socket in self._sockets)

    def delay_next(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        """The next `times` requests matching are answered `seconds` late (then normally)."""
        self._delays.append((method, re.compile(path_regex), seconds, [times]))

    def threads(self, parent: str | None = None) -> list[dict[str, Any]]:
        """Public threads in `parent` (default: general), oldest first."""
        parent = self.channel_id(parent) if parent else self.general
        return [c for c in self.channels.values() if c["type"] == 11 and c["parent_id"] == parent]

    def posted(self, method: str = "POST", pattern: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner, self.port = await serve(self.app, "127.0.0.1", 0)

    async def close(self) -> None:
        for task in list(self._tasks):
            await task
        for socket in list(self._connections):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def drop_gateway(self) -> None:
        """Close the bot's websocket with a resumable code (4000), as Discord does now and then."""
        sockets, self._sockets[:] = list(self._sockets), []  # events from now on wait for the RESUME
        for socket in sockets:
            await socket.close(code=4000)

    def disconnect_gateway(self) -> None:
        """`drop_gateway` from synchronous code: the bot reconnects and RESUMEs (missed events are replayed)."""
        task = asyncio.get_running_loop().create_task(self.drop_gateway())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- gateway ------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._connections.add(socket)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}}))
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                if payload["op"] == 1:
                    await socket.send_str(json.dumps({"op": 11}))
                elif payload["op"] in (2, 6) and payload["d"]["token"] != self.token:
                    await socket.close(code=4004)  # Authentication failed
                elif payload["op"] == 2:
                    shard = tuple(payload["d"].get("shard") or (0, 1))
                    assert len(shard) == 2 and 0 <= shard[0] < shard[1], f"bad shard {shard}"
                    session = f"fake-session-{len(self.identified_shards)}"
                    self.identified_shards.append(shard)
                    self._session_shards[session] = self._shard[socket] = shard
                    guilds = [g for g in self.guild_names if self._covers(shard, g)]
                    ready = self._ready_payload(session, guilds)
                    if "shard" in payload["d"]:
                        ready["shard"] = list(shard)  # Discord echoes the shard of a sharded session
                    await self._send(socket, "READY", ready)
                    for guild_id in guilds:
                        await self._send(socket, "GUILD_CREATE", self.guild_payload(guild_id))
                    self._sockets.append(socket)
                    self.identified.set()
                elif payload["op"] == 6:
                    self._shard[socket] = shard = self._session_shards.get(payload["d"]["session_id"], (0, 1))
                    self._sockets.append(socket)
                    for missed in [e for e in self._history if e["s"] > (payload["d"]["seq"] or 0)]:
                        if self._covers(shard, self._event_guild(missed["t"], missed["d"])):
                            await socket.send_str(json.dumps(missed))
                    await self._send(socket, "RESUMED", {})
                    self.resumes += 1
        finally:
            self._connections.discard(socket)
            self._shard.pop(socket, None)
            if socket in self._sockets:
                self._sockets.remove(socket)
        return socket

    def _ready_payload(self, session: str, guilds: list[str]) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": guild_id, "unavailable": True} for guild_id in guilds],
            "session_id": session,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
        }

    def _frame(self, event: str, data: Any) -> dict[str, Any]:
        self._seq += 1
        return {"op": 0, "t": event, "s": self._seq, "d": data}

    async def _send(self, socket: web.WebSocketResponse, event: str, data: Any) -> None:
        await socket.send_str(json.dumps(self._frame(event, data)))

    @staticmethod
    def _covers(shard: tuple[int, int], guild_id: str | None) -> bool:
        """Whether a session of this shard gets the guild's events (events of no guild go to shard 0)."""
        if guild_id is None:
            return shard[0] == 0
        return (int(guild_id) >> 22) % shard[1] == shard[0]

    @staticmethod
    def _event_guild(event: str, data: Any) -> str | None:
        if not isinstance(data, dict):
            return None
        return data.get("guild_id") or (data.get("id") if event.startswith("GUILD_") else None)

    @property
    def connected_shards(self) -> list[tuple[int, int]]:
        """The (id, count) of every open session, one entry per session."""
        return [shard for socket, shard in self._shard.items() if socket in self._sockets and not socket.closed]

    async def dispatch(self, event: str, data: Any) -> list[tuple[int, int]]:
        """Send a gateway event to the sessions of its guild's shard (kept for replay if they are between
        connections); returns the shard of each session it went to."""
        frame = self._frame(event, data)
        self._history.append(frame)
        guild_id = self._event_guild(event, data)
        sent = []
        for socket in list(self._sockets):
            shard = self._shard.get(socket, (0, 1))
            if not socket.closed and self._covers(shard, guild_id):
                try:
                    await socket.send_str(json.dumps(frame))
                except ConnectionResetError:  # the bot went away (killed) between the check and the send
                    continue
                sent.append(shard)
        return sent

    async def wait_ready(self, timeout: float = 10, *, within: float | None = None) -> None:  # noqa: ASYNC109
        """Until a bot has IDENTIFYed and been sent READY and GUILD_CREATE."""
        await asyncio.wait_for(self.identified.wait(), within or timeout)

    # --- interactions -------------------------------------------------------------------------------------

    async def interact(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user: str,
        channel: str | None,
        message: dict[str, Any] | None = None,
        attachment_size_limit: int | None = None,
        dm: bool = False,
    ) -> Interaction:
        """Send an interaction from `user` in `channel`; with `dm`, from their direct messages with the bot
        instead (no guild, no member: what a forged payload or a future install type would send)."""
        channel_id = self.channel_id(channel) if channel else self.general
        guild_id = self.channels[channel_id]["guild_id"]
        permissions = self.permissions_of(user)
        payload: dict[str, Any] = {
            "id": self.snowflake(),
            "application_id": self.application_id,
            "type": kind,
            "data": data,
            "guild_id": guild_id,
            "guild": {"id": guild_id, "locale": self.preferred_locale, "features": []},
            "channel": self.channels[channel_id],
            "channel_id": channel_id,
            "member": {**self.member(user), "permissions": str(permissions)},
            "token": f"itoken-{self.snowflake()}",
            "version": 1,
            "app_permissions": str(self.bot_permissions_in(channel_id)),
            "locale": self.locales.get(user, "en-US"),
            "guild_locale": self.preferred_locale,
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild_id},
            "context": 0,
            "attachment_size_limit": attachment_size_limit or self.filesize_limit,
        }
        if message is not None:
            payload["message"] = message
        if dm:
            for key in ("guild_id", "guild", "member", "guild_locale"):
                del payload[key]
            dm_channel = next((c for c, u in self.dm_channels.items() if u == self.users[user]["id"]), None)
            if dm_channel is None:
                dm_channel = self.snowflake()
                self.dm_channels[dm_channel] = self.users[user]["id"]
                self.messages[dm_channel] = []
            payload |= {
                "user": self.users[user],
                "channel_id": dm_channel,
                "channel": {"id": dm_channel, "type": 1, "recipients": [self.users[user]], "flags": 0},
                "authorizing_integration_owners": {"1": self.users[user]["id"]},
                "context": 1,
            }
        interaction = Interaction(payload["id"], payload["token"], payload)
        self.interactions[interaction.id] = interaction
        interaction.sent_to = await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    def _resolve(self, options: list[dict[str, Any]], resolved: dict[str, Any]) -> None:
        """Fill `data.resolved` for attachment, user, channel and role options (values given as ids)."""
        for option in options:
            kind, value = option["type"], option.get("value", "")
            if kind in (1, 2):
                self._resolve(option.get("options", []), resolved)
            elif kind == 11 and isinstance(value, dict):  # an attachment payload from add_attachment
                resolved.setdefault("attachments", {})[value["id"]] = value
                option["value"] = value["id"]
            elif kind == 6:
                name = next(n for n, u in self.users.items() if u["id"] == value)
                resolved.setdefault("users", {})[value] = self.users[name]
                member = {k: v for k, v in self.member(name).items() if k != "user"}
                resolved.setdefault("members", {})[value] = member | {"permissions": str(self.permissions_of(name))}
            elif kind == 7:
                resolved.setdefault("channels", {})[value] = {**self.channels[value], "permissions": "0"}
            elif kind == 8:
                resolved.setdefault("roles", {})[value] = next(r for r in self.roles if r["id"] == value)

    async def send_slash(
        self,
        name: str,
        options: Sequence[dict[str, Any]] = (),
        *,
        user: str = "alice",
        channel: str = "general",
        subcommand: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        attachment_size_limit: int | None = None,
        dm: bool = False,
    ) -> Interaction:
        """Run a chat-input command. `options` are Discord's option dicts ({"name", "type", "value"}); an
        attachment option (type 11) may carry the `add_attachment` payload as its value. `subcommand` may be
        "group sub". `attachments` are added to `data.resolved.attachments` as they are."""
        built = [dict(o) for o in options]
        resolved: dict[str, Any] = {}
        for attachment in attachments:
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
        self._resolve(built, resolved)
        if subcommand:  # "sub" or "group sub"
            *groups, sub = subcommand.split()
            built = [{"name": sub, "type": 1, "options": built}]
            for group in reversed(groups):
                built = [{"name": group, "type": 2, "options": built}]
        guild_id = self.channels[self.channel_id(channel)]["guild_id"]
        data: dict[str, Any] = {"id": self.snowflake(), "name": name, "type": 1}
        if not dm:
            data["guild_id"] = guild_id
        data["options"] = built
        if resolved:
            data["resolved"] = resolved
        return await self.interact(
            2, data, user=user, channel=channel, attachment_size_limit=attachment_size_limit, dm=dm
        )

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        sub: str | None = None,
        user: str = "alice",
        channel: str | None = None,
        attachment_size_limit: int | None = None,
        types: dict[str, int] | None = None,
        dm: bool = False,
    ) -> Interaction:
        """`/name [sub] option:value ...` with option types guessed from the values: an attachment payload
        (from add_attachment), a user dict (from `users`), bool, int, float or str; `types` overrides."""
        built = []
        for key, value in (options or {}).items():
            if isinstance(value, dict) and "filename" in value:
                kind = 11
            elif isinstance(value, dict) and "username" in value:
                kind, value = 6, value["id"]
            elif key in (types or {}):
                kind = (types or {})[key]
            else:
                kind = {bool: 5, int: 4, float: 10}.get(type(value), 3)
            built.append({"name": key, "type": kind, "value": value})
        return await self.send_slash(
            name,
            built,
            user=user,
            channel=channel or self.general,
            subcommand=sub,
            attachment_size_limit=attachment_size_limit,
            dm=dm,
        )

    async def send_context_menu(
        self, name: str, message: str | dict[str, Any], *, user: str = "alice", channel: str | None = None
    ) -> Interaction:
        """Run a message command (data.type 3) on a message (its id, or its payload)."""
        target = self.find_message(message) if isinstance(message, str) else message
        resolved = {"messages": {target["id"]: self._public(target)}}
        data = {"id": self.snowflake(), "name": name, "type": 3, "target_id": target["id"], "resolved": resolved}
        return await self.interact(2, data, user=user, channel=channel or target["channel_id"])

    async def send_component(
        self,
        custom_id: str,
        message: str | dict[str, Any],
        *,
        user: str = "alice",
        channel: str | None = None,
        values: list[str] | None = None,
        dm: bool = False,
    ) -> Interaction:
        """Press a button (with `values`: choose in a string select) on a message (its id, or its payload)."""
        target = self.find_message(message) if isinstance(message, str) else message
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": 2 if values is None else 3}
        if values is not None:
            data["values"] = values
        channel = channel or target["channel_id"]
        return await self.interact(3, data, user=user, channel=channel, message=self._public(target), dm=dm)

    message_menu = send_context_menu
    press = send_component

    async def send_modal_submit(
        self, custom_id: str, values: dict[str, Any], *, user: str = "alice", channel: str | None = None
    ) -> Interaction:
        """Submit a modal, `values` by field custom_id (a list for selects). If the bot showed this modal to
        `user`, the submission mirrors its layout (Label components, type 18, or action rows) and comes from
        the same channel; otherwise it holds text inputs in action rows."""
        shown = next(
            (
                i
                for i in reversed(self.interactions.values())
                if i.modal
                and i.modal["custom_id"] == custom_id
                and i.payload.get("member", i.payload)["user"] == self.users[user]
            ),
            None,
        )
        if shown is not None and shown.modal is not None:
            layout, channel = shown.modal["components"], channel or shown.payload["channel_id"]
        else:
            layout = [{"type": 1, "components": [{"type": 4, "custom_id": key}]} for key in values]
        answers = self._modal_answers(layout, lambda item: values.get(item["custom_id"]))
        return await self.interact(5, {"custom_id": custom_id, "components": answers}, user=user, channel=channel)

    async def submit_modal(self, shown: Interaction, values: dict[str, str], *, user: str = "alice") -> Interaction:
        """Fill the modal the bot showed, by field label, and submit it."""
        modal = shown.modal
        assert modal is not None, "the bot showed no modal"
        components = self._modal_answers(modal["components"], lambda item: values.get(item.get("label", "")))
        data = {"custom_id": modal["custom_id"], "components": components}
        return await self.interact(5, data, user=user, channel=shown.payload["channel_id"])

    @staticmethod
    def _modal_answers(layout: list[dict[str, Any]], value_of: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
        """What Discord sends back for a modal layout: rows and labels kept, each input with its value."""

        def answer(item: dict[str, Any], label: str | None) -> dict[str, Any]:
            value = value_of({**item, "label": label or item.get("label", "")})
            out: dict[str, Any] = {"type": item["type"], "custom_id": item["custom_id"]}
            if item["type"] == 4:
                out["value"] = value if value is not None else item.get("value") or ""
            else:  # selects and file uploads answer a list of values
                out["values"] = value or []
            return out

        answers = []
        for row in layout:
            if row["type"] == 1:
                answers.append({"type": 1, "components": [answer(c, None) for c in row["components"]]})
            elif row["type"] == 18:
                answers.append({"type": 18, "component": answer(row["component"], row.get("label"))})
        return answers

    # --- REST ---------------------------------------------------------------------------------------------
    # A handler gets the recorded request and the ids from its path; it returns the JSON body (None: 204) or
    # raises Refused with Discord's status, code and message.

    @staticmethod
    def _json(body: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=json.dumps(body).encode(), content_type=JSON)

    def _error(self, status: int, code: int, message: str) -> web.Response:
        return self._json({"message": message, "code": code}, status)

    async def _read(self, request: web.Request) -> tuple[Any, Files]:
        files: Files = []
        if request.content_type == "multipart/form-data":
            payload: Any = None
            async for part in await request.multipart():
                assert isinstance(part, BodyPartReader)
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                else:
                    files.append((part.filename or "", bytes(await part.read())))
            return payload, files
        raw = await request.read() if request.can_read_body else b""
        return (json.loads(raw) if raw else None), files

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body, files = await self._read(request)
        call = Recorded(request.method, path, body, files, dict(request.query))
        self.requests.append(call)
        for delay in self._delays:
            method, pattern, seconds, left = delay
            if method == request.method and pattern.search(path) and left[0] > 0:
                left[0] -= 1
                await asyncio.sleep(seconds)  # Discord being slow on this route, as under load
                break
        for fault in self._faults:
            method, pattern, status, code, message, left = fault
            if method == request.method and pattern.search(path):
                left[0] -= 1
                if left[0] <= 0:
                    self._faults.remove(fault)
                call.status = status
                return self._error(status, code, message or f"{status} injected")
        public = path.startswith(("/interactions/", "/webhooks/", "/gateway"))
        if not public and request.headers.get("Authorization") != f"Bot {self.token}":
            return self._error(401, 0, "401: Unauthorized")
        headers: dict[str, str] = {}
        if self.rate_limits:
            refused, headers = self._take(request.method, path)
            if refused is not None:
                call.status = refused.status
                return refused
        response = await self._handle(call)
        response.headers.update(headers)
        call.status = response.status
        return response

    async def _handle(self, call: Recorded) -> web.Response:
        for route, method, handler in self._routes:
            if (match := re.fullmatch(route, call.path)) and method == call.method:
                try:
                    answer = await handler(self, call, *match.groups())
                except Refused as refused:
                    return self._error(*refused.args)
                return web.Response(status=204) if answer is None else self._json(answer)
        self.unexpected.append(f"{call.method} {call.path}")
        return self._error(404, 0, "404: Not Found")

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
        response = self._json(body, 429)
        response.headers.update(headers)
        return response, headers

    async def _me(self, call: Recorded) -> Any:
        return self.bot_user

    async def _application(self, call: Recorded) -> Any:
        return {
            "id": self.application_id,
            "name": "video-bot",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.users["mod"],
            "verify_key": "00",
            "flags": 0,
            "interactions_endpoint_url": None,
        }

    async def _get_gateway(self, call: Recorded, bot: str | None) -> Any:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return {"url": self.gateway_url} | ({"shards": self.shard_count, "session_start_limit": limit} if bot else {})

    async def _sync(self, call: Recorded, *guild: str) -> Any:
        synced = [
            {"description": "", **c, "id": self.snowflake(), "application_id": self.application_id, "version": "1"}
            | {"default_member_permissions": c.get("default_member_permissions")}
            for c in call.json
        ]
        self.commands[guild[0] if guild else None] = synced  # a sync replaces all commands in its scope
        return synced

    async def _get_commands(self, call: Recorded, *guild: str) -> Any:
        if guild and guild[0] != self.guild_id:
            raise Refused(403, 50001, "Missing Access")
        return self.commands.get(guild[0] if guild else None, [])

    def _known_guild(self, guild_id: str) -> None:
        if guild_id not in self.guild_names:
            raise Refused(404, 10004, "Unknown Guild")

    async def _my_guilds(self, call: Recorded) -> Any:
        if int(call.query.get("after", 0)) >= int(self.guild_id):
            return []
        permissions = 0  # the bot's guild-level permissions: @everyone and its roles
        for role in self.roles:
            if role["id"] == self.guild_id or role["id"] in self.bot_roles:
                permissions |= int(role["permissions"])
        return [{"id": self.guild_id, "name": "Test server", "icon": None, "owner": False,
                 "permissions": str(permissions), "features": []}]  # fmt: skip

    async def _get_guild(self, call: Recorded, guild_id: str) -> Any:
        self._known_guild(guild_id)
        payload = self.guild_payload(guild_id)
        return {k: v for k, v in payload.items() if k not in GATEWAY_ONLY}

    async def _get_roles(self, call: Recorded, guild_id: str) -> Any:
        self._known_guild(guild_id)
        return self.guild_roles(guild_id)

    async def _get_guild_channels(self, call: Recorded, guild_id: str) -> Any:
        self._known_guild(guild_id)
        return [
            self.rest_channel(c["id"])
            for c in self.channels.values()
            if c["type"] not in THREADS and c["guild_id"] == guild_id
        ]

    def _message(
        self,
        channel_id: str,
        body: dict[str, Any],
        files: Files,
        author: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """A stored message: the public payload plus `files` [(filename, bytes)] and `allowed_mentions`."""
        return {
            "id": message_id or self.snowflake(),
            "channel_id": channel_id,
            "guild_id": self.channels.get(channel_id, {}).get("guild_id", self.guild_id),
            "author": author or self.bot_user,
            "content": body.get("content") or "",
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "attachments": self._attachments(files),
            "files": files,
            "flags": body.get("flags") or 0,
            "allowed_mentions": body.get("allowed_mentions"),
            "nonce": body.get("nonce"),
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "type": 0,
            "mentions": [],
            "mention_roles": [],
            **dict.fromkeys(("mention_everyone", "pinned", "tts"), False),
        }

    def _attachments(self, files: Files) -> list[dict[str, Any]]:
        return [self.add_attachment(name, data) | {"index": i} for i, (name, data) in enumerate(files)]

    def _edit(self, message: dict[str, Any], body: dict[str, Any], files: Files) -> None:
        """Apply a PATCH: given fields replace; `attachments` keeps the listed old ones and adds the new files."""
        for key in ("content", "embeds", "components", "allowed_mentions"):
            if key in body:
                message[key] = body[key] if body[key] is not None else ([] if key != "content" else "")
        if "attachments" in body or files:
            kept = {a["id"] for a in body.get("attachments") or [] if "id" in a}
            old = [(a, f) for a, f in zip(message["attachments"], message["files"], strict=False) if a["id"] in kept]
            message["attachments"] = [a for a, _ in old] + self._attachments(files)
            message["files"] = [f for _, f in old] + files
        if "flags" in body:  # ephemeral cannot be changed by an edit
            message["flags"] = (body["flags"] or 0) & ~EPHEMERAL | message["flags"] & EPHEMERAL
        message["flags"] &= ~LOADING
        message["edited_timestamp"] = now_iso()

    @staticmethod
    def _public(message: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if k not in ("files", "allowed_mentions")}

    @staticmethod
    def _check_upload(files: Files, limit: int) -> None:
        if any(len(data) > limit for _, data in files):
            raise Refused(413, 40005, "Request entity too large")

    def _channel(self, channel_id: str) -> dict[str, Any]:
        if channel_id not in self.channels:
            raise Refused(*UNKNOWN_CHANNEL)
        return self.channels[channel_id]

    def _find(self, channel_id: str, message_id: str) -> dict[str, Any] | None:
        return next((m for m in self.messages.get(channel_id, []) if m["id"] == message_id), None)

    def _stored(self, channel_id: str, message_id: str) -> dict[str, Any]:
        self._channel(channel_id)
        if (message := self._find(channel_id, message_id)) is None:
            raise Refused(*UNKNOWN_MESSAGE)
        return message

    async def _create_message(self, call: Recorded, channel_id: str) -> Any:
        body, files = call.json or {}, call.files
        if channel_id in self.dm_channels:
            return self._direct_message(channel_id, body, files)
        kind = self._channel(channel_id)["type"]
        if kind in (15, 16):
            raise Refused(400, 50008, "Cannot send messages in a non-text channel")
        permissions = P(self.bot_permissions_in(channel_id))
        allowed = permissions.send_messages_in_threads if kind in THREADS else permissions.send_messages
        if not allowed or (files and not permissions.attach_files):
            raise Refused(*MISSING_PERMISSIONS)
        self._check_upload(files, self.filesize_limit)
        key = (channel_id, str(body.get("nonce")))
        if (
            self.dedupe_nonces
            and body.get("enforce_nonce")
            and key in self._nonces
            and time.monotonic() - self._nonces[key][0] < NONCE_SECONDS
        ):
            return self._public(self._nonces[key][1])  # Discord answers a repeated nonce with the first message
        message = self._message(channel_id, body, files)
        self.messages[channel_id].append(message)
        if body.get("nonce"):
            self._nonces[key] = (time.monotonic(), message)
        return self._public(message)

    async def _open_dm(self, call: Recorded) -> Any:
        """POST /users/@me/channels: the bot's direct-message channel with a user (one per user)."""
        recipient = str((call.json or {}).get("recipient_id"))
        user = next((u for u in self.users.values() if u["id"] == recipient), None)
        if user is None:
            raise Refused(400, 50033, "Invalid Recipient(s)")
        channel_id = next((c for c, u in self.dm_channels.items() if u == recipient), None)
        if channel_id is None:
            channel_id = self.snowflake()
            self.dm_channels[channel_id] = recipient
            self.messages[channel_id] = []
        return {"id": channel_id, "type": 1, "last_message_id": None, "recipients": [user], "flags": 0}

    def _direct_message(self, channel_id: str, body: dict[str, Any], files: Files) -> Any:
        if self.dm_channels[channel_id] in self.closed_dms:
            raise Refused(403, 50007, "Cannot send messages to this user")
        message = self._message(channel_id, body, files)
        message.pop("guild_id")
        self.messages[channel_id].append(message)
        return self._public(message)

    async def _edit_message(self, call: Recorded, channel_id: str, message_id: str) -> Any:
        message = self._stored(channel_id, message_id)
        self._check_upload(call.files, self.filesize_limit)
        self._edit(message, call.json or {}, call.files)
        return self._public(message)

    async def _delete_message(self, call: Recorded, channel_id: str, message_id: str) -> None:
        self.messages[channel_id].remove(self._stored(channel_id, message_id))

    async def _get_messages(self, call: Recorded, channel_id: str) -> Any:
        self._channel(channel_id)
        limit = int(call.query.get("limit", 50))
        # Newest first. No nonces: Discord echoes one to the request that sent it and does not promise it in a
        # channel's history, so the bot must find its own earlier posts by what they show (their buttons).
        return [self._public(m) | {"nonce": None} for m in reversed(self.messages[channel_id][-limit:])]

    async def _get_channel(self, call: Recorded, channel_id: str) -> Any:
        return self._channel(channel_id)

    async def _new_thread(self, parent: str, thread_id: str, kind: int, body: dict[str, Any]) -> dict[str, Any]:
        thread = {
            "id": thread_id,
            "type": kind,
            "guild_id": self.channels[parent]["guild_id"],
            "parent_id": parent,
            "name": body["name"],
            "rate_limit_per_user": body.get("rate_limit_per_user") or 0,
            "flags": 0,
            "last_message_id": None,
            **self._thread_fields(self.bot_user_id, body.get("auto_archive_duration") or 1440),
        }
        self.channels[thread_id] = thread
        self.messages[thread_id] = []
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    async def _start_thread(self, call: Recorded, channel_id: str, message_id: str) -> Any:
        """A public thread from a message: the thread's id is the message's."""
        if self._channel(channel_id)["type"] not in (0, 5):  # not in forum or media channels, nor inside a thread
            raise Refused(*WRONG_CHANNEL_TYPE)
        if not P(self.bot_permissions_in(channel_id)).create_public_threads:
            raise Refused(*MISSING_PERMISSIONS)
        self._stored(channel_id, message_id)
        if message_id in self.channels:
            raise Refused(400, 160004, "A thread has already been created for this message")
        return await self._new_thread(channel_id, message_id, 11, call.json)

    async def _create_thread(self, call: Recorded, channel_id: str) -> Any:
        """A thread without a starter message, or a forum post (thread and first message share one id)."""
        kind = self._channel(channel_id)["type"]
        if kind in THREADS:
            raise Refused(*WRONG_CHANNEL_TYPE)
        if kind not in (15, 16):
            return await self._new_thread(channel_id, self.snowflake(), call.json.get("type") or 12, call.json)
        self._check_upload(call.files, self.filesize_limit)
        thread = await self._new_thread(channel_id, self.snowflake(), 11, call.json)
        message = self._message(thread["id"], call.json.get("message") or {}, call.files, message_id=thread["id"])
        self.messages[thread["id"]].append(message)
        return {**thread, "message": self._public(message)}

    def _respond(self, interaction: Interaction, body: dict[str, Any], files: Files) -> dict[str, Any]:
        """A new interaction message; it shows in the channel unless ephemeral."""
        message = self._message(interaction.payload["channel_id"], body, files)
        message["interaction_metadata"] = {
            "id": interaction.id,
            "type": interaction.payload["type"],
            "user": interaction.payload["member"]["user"]
            if "member" in interaction.payload
            else interaction.payload["user"],
            "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
        }
        interaction.messages.append(message)
        if not message["flags"] & EPHEMERAL and message["channel_id"] in self.messages:
            self.messages[message["channel_id"]].append(message)
        return message

    def _interaction_message(self, message_id: str) -> dict[str, Any] | None:
        """An interaction's own message (an ephemeral one is in no channel's list) by its id."""
        return next((m for i in self.interactions.values() for m in i.messages if m["id"] == message_id), None)

    async def _callback(self, call: Recorded, interaction_id: str, token: str) -> Any:
        interaction = self.interactions.get(interaction_id)
        if interaction is None or interaction.token != token:
            raise Refused(404, 10062, "Unknown interaction")
        if interaction.callbacks:
            raise Refused(400, 40060, "Interaction has already been acknowledged.")
        body, data = call.json, call.json.get("data") or {}
        self._check_upload(call.files, interaction.payload["attachment_size_limit"])
        interaction.callbacks.append(body)
        interaction.first_answer_at = time.perf_counter()
        if body["type"] not in (5, 6):
            interaction.last_answer_at = interaction.first_answer_at
        response: dict[str, Any] = {"interaction": {"id": interaction_id, "type": interaction.payload["type"]}}
        message: dict[str, Any] | None = None
        if body["type"] == 4:  # a message
            message = self._respond(interaction, data, call.files)
        elif body["type"] == 5:  # "thinking": the loading message becomes @original
            message = self._respond(interaction, {"flags": (data.get("flags") or 0) | LOADING}, [])
        elif body["type"] == 7:  # update the message the component is on
            target = interaction.payload["message"]
            message = (
                self._find(target["channel_id"], target["id"]) or self._interaction_message(target["id"]) or target
            )
            self._edit(message, data, call.files)
            interaction.messages.append(message)
        if message is not None:
            response["interaction"].update(
                response_message_id=message["id"],
                response_message_loading=bool(message["flags"] & LOADING),
                response_message_ephemeral=bool(message["flags"] & EPHEMERAL),
            )
            response["resource"] = {"type": body["type"], "message": self._public(message)}
        interaction.answered.set()
        return response

    def _webhook_interaction(self, token: str) -> Interaction:
        found = next((i for i in self.interactions.values() if i.token == token), None)
        if found is None:
            raise Refused(404, 10015, "Unknown Webhook")
        return found

    async def _followup(self, call: Recorded, app_id: str, token: str) -> Any:
        interaction = self._webhook_interaction(token)
        body = call.json or {}
        self._check_upload(call.files, interaction.payload["attachment_size_limit"])
        loading = next((m for m in interaction.messages if m["flags"] & LOADING), None)
        if loading is not None:  # the first followup after a defer replaces the loading message
            ephemeral = loading["flags"] & EPHEMERAL  # the defer decided; the followup's flag cannot change it
            loading.update(self._message(loading["channel_id"], body, call.files, message_id=loading["id"]))
            loading["flags"] = ((body.get("flags") or 0) & ~(LOADING | EPHEMERAL)) | ephemeral
            message = loading
        else:
            message = self._respond(interaction, body, call.files)
        interaction.followups.append(message)
        interaction.last_answer_at = time.perf_counter()
        interaction.answered.set()
        return self._public(message)

    async def _webhook_message(self, call: Recorded, app_id: str, token: str, message_id: str) -> Any:
        """GET, PATCH or DELETE @original or a followup."""
        interaction = self._webhook_interaction(token)
        original = interaction.messages[:1] if message_id == "@original" else []
        message = next(iter(original or [m for m in interaction.messages if m["id"] == message_id]), None)
        if message is None:
            raise Refused(*UNKNOWN_MESSAGE)
        if call.method == "PATCH":
            self._check_upload(call.files, interaction.payload["attachment_size_limit"])
            self._edit(message, call.json or {}, call.files)
            interaction.last_answer_at = time.perf_counter()
        elif call.method == "DELETE":
            interaction.messages.remove(message)
            if message in self.messages.get(message["channel_id"], []):
                self.messages[message["channel_id"]].remove(message)
            return None
        return self._public(message)

    async def _get_member(self, call: Recorded, guild_id: str, user_id: str) -> Any:
        if user_id == self.bot_user_id:
            return self.bot_member()
        name = next((n for n, u in self.users.items() if u["id"] == user_id), None)
        if name is None:
            raise Refused(404, 10007, "Unknown Member")
        return self.member(name)

    _routes: ClassVar[list[tuple[str, str, Any]]] = [
        (r"/users/@me", "GET", _me),
        (r"/users/@me/channels", "POST", _open_dm),
        (r"/oauth2/applications/@me", "GET", _application),
        (r"/gateway(/bot)?", "GET", _get_gateway),
        (r"/applications/\d+/commands", "PUT", _sync),
        (r"/applications/\d+/guilds/(\d+)/commands", "PUT", _sync),
        (r"/channels/(\d+)/messages", "POST", _create_message),
        (r"/channels/(\d+)/messages", "GET", _get_messages),
        (r"/channels/(\d+)/messages/(\d+)", "PATCH", _edit_message),
        (r"/channels/(\d+)/messages/(\d+)", "DELETE", _delete_message),
        (r"/channels/(\d+)/messages/(\d+)/threads", "POST", _start_thread),
        (r"/channels/(\d+)/threads", "POST", _create_thread),
        (r"/channels/(\d+)", "GET", _get_channel),
        (r"/interactions/(\d+)/([^/]+)/callback", "POST", _callback),
        (r"/webhooks/(\d+)/([^/]+)", "POST", _followup),
        (r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "GET", _webhook_message),
        (r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "PATCH", _webhook_message),
        (r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "DELETE", _webhook_message),
        (r"/guilds/(\d+)/members/(\d+)", "GET", _get_member),
        (r"/users/@me/guilds", "GET", _my_guilds),
        (r"/guilds/(\d+)", "GET", _get_guild),
        (r"/guilds/(\d+)/roles", "GET", _get_roles),
        (r"/guilds/(\d+)/channels", "GET", _get_guild_channels),
        (r"/applications/\d+/commands", "GET", _get_commands),
        (r"/applications/\d+/guilds/(\d+)/commands", "GET", _get_commands),
    ]

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["attachment"])
        if data is None:
            raise web.HTTPNotFound()
        self.cdn_in_flight += 1
        self.cdn_peak = max(self.cdn_peak, self.cdn_in_flight)
        try:
            if self.cdn_gate is not None:
                await self.cdn_gate.wait()
            return web.Response(body=data, content_type="application/octet-stream")
        finally:
            self.cdn_in_flight -= 1


# --- running things against the fake ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_fake(**options: Any) -> AsyncIterator[FakeDiscord]:
    """A started FakeDiscord; closed afterwards, and discord.py's endpoints restored."""
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    fake = FakeDiscord(**options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


ClientT = TypeVar("ClientT", bound=discord.Client)


@contextlib.asynccontextmanager
async def running_bot(
    bot: ClientT,
    fake: FakeDiscord,
    *,
    token: str | None = None,
    timeout: float = 10,  # noqa: ASYNC109
) -> AsyncIterator[ClientT]:
    """Point discord.py at the fake, start `bot` and wait until it is ready; close it (and its session) on exit.

    Pass `guild_ready_timeout=0.05` to the bot, or readiness waits two seconds for guilds."""
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    fake.identified.clear()
    task = asyncio.create_task(bot.start(token or fake.token))
    ready = asyncio.create_task(bot.wait_until_ready())
    try:
        await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # login failed: raise why
            raise RuntimeError("the bot stopped before it was ready")
        if not ready.done():
            raise TimeoutError(f"the bot was not ready within {timeout}s")
        yield bot
    finally:
        ready.cancel()
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


async def wait_until(predicate: Any, within: float = 15.0, interval: float = 0.01) -> None:
    """Poll a condition (a callable, sync or async) until it holds; fail the test if it never does."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)

"""The fake Discord's REST API: the bot's own records, guilds, channels, messages, threads and direct messages,
the attachment CDN, and what every request goes through first (injected faults and delays, the token, the rate
limits). The interaction routes are in interactions.py, GET /gateway in gateway.py."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, ClassVar

from aiohttp import BodyPartReader, web

from tests.fakes.discord.gateway import Gateway
from tests.fakes.discord.oauth import OAuth
from tests.fakes.discord.ratelimits import RateLimits
from tests.fakes.discord.wire import (
    MISSING_PERMISSIONS,
    WRONG_CHANNEL_TYPE,
    Files,
    Recorded,
    Refused,
    error_response,
    json_response,
)
from tests.fakes.discord.world import THREADS, P

NONCE_SECONDS = 5 * 60  # how long Discord remembers an enforced nonce ("a few minutes")
# Guild fields only GUILD_CREATE carries; GET /guilds/{id} leaves them out.
GATEWAY_ONLY = ("members", "channels", "threads", "voice_states", "presences", "joined_at", "large", "member_count")
Route = tuple[str, str, Any]  # (path regex, method, handler)


class Rest(Gateway, RateLimits, OAuth):
    """A handler gets the recorded request and the ids from its path; it returns the JSON body (None: 204) or
    raises Refused with Discord's status, code and message. `_routes` is every part's routes (see FakeDiscord)."""

    _routes: ClassVar[list[Route]]

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.requests: list[Recorded] = []
        self.unexpected: list[str] = []  # "METHOD /path" of every request no route matched
        self.commands: dict[str | None, list[dict[str, Any]]] = {}  # as last synced, by guild id (None: global)
        self._faults: list[tuple[str, re.Pattern[str], int, int, str, list[int]]] = []
        self._delays: list[tuple[str, re.Pattern[str], float, list[int]]] = []
        self._nonces: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        # False: a repeated enforced nonce is posted again, as Discord does once it forgot the nonce (minutes later),
        # so only the bot's own fencing can keep a video from being posted twice.
        self.dedupe_nonces = True
        self.app.router.add_get("/attachments/{attachment}/{filename}", self._cdn)
        self.app.router.add_get("/cdn/{attachment}/{filename}", self._cdn)
        self.app.router.add_route("*", "/api/v10/{path:.*}", self._rest)

    def fail_next(
        self, method: str, path_regex: str, status: int, code: int = 0, message: str = "", times: int = 1
    ) -> None:
        """The next `times` requests matching answer this Discord error (checked before anything else)."""
        self._faults.append((method, re.compile(path_regex), status, code, message, [times]))

    def delay_next(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        """The next `times` requests matching are answered `seconds` late (then normally)."""
        self._delays.append((method, re.compile(path_regex), seconds, [times]))

    def posted(self, method: str = "POST", pattern: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # --- every request ---------------------------------------------------------------------------------------

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
        if request.content_type == "application/x-www-form-urlencoded":
            return dict(await request.post()), files
        raw = await request.read() if request.can_read_body else b""
        return (json.loads(raw) if raw else None), files

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body, files = await self._read(request)
        authorization = request.headers.get("Authorization", "")
        call = Recorded(request.method, path, body, files, dict(request.query), authorization=authorization)
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
                return error_response(status, code, message or f"{status} injected")
        public = path.startswith(("/interactions/", "/webhooks/", "/gateway", "/oauth2/token"))
        a_member = authorization.startswith("Bearer ") and path in ("/users/@me", "/users/@me/guilds")
        if not public and not a_member and authorization != f"Bot {self.token}":
            return error_response(401, 0, "401: Unauthorized")
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
                    return error_response(*refused.args)
                return web.Response(status=204) if answer is None else json_response(answer)
        self.unexpected.append(f"{call.method} {call.path}")
        return error_response(404, 0, "404: Not Found")

    # --- the routes ------------------------------------------------------------------------------------------

    async def _me(self, call: Recorded) -> Any:
        member = self.bearer_member(call)
        return self.bot_user if member is None else self.member_me(member)

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
        if (member := self.bearer_member(call)) is not None:
            return self.member_guilds(member)
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
        return self._post_once(channel_id, body, files)

    def _post_once(self, channel_id: str, body: dict[str, Any], files: Files) -> Any:
        """Post, unless an enforced nonce repeats within minutes (in a channel, a thread or a DM alike)."""
        key = (channel_id, str(body.get("nonce")))
        if (
            self.dedupe_nonces
            and body.get("enforce_nonce")
            and key in self._nonces
            and time.monotonic() - self._nonces[key][0] < NONCE_SECONDS
        ):
            return self._public(self._nonces[key][1])  # Discord answers a repeated nonce with the first message
        message = self._message(channel_id, body, files)
        if channel_id in self.dm_channels:
            message.pop("guild_id")
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
        return self._post_once(channel_id, body, files)

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

    async def _get_message(self, call: Recorded, channel_id: str, message_id: str) -> Any:
        return self._public(self._stored(channel_id, message_id)) | {"nonce": None}

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
        if kind in (*THREADS, 1):
            raise Refused(*WRONG_CHANNEL_TYPE)
        if kind not in (15, 16):
            return await self._new_thread(channel_id, self.snowflake(), call.json.get("type") or 12, call.json)
        self._check_upload(call.files, self.filesize_limit)
        thread = await self._new_thread(channel_id, self.snowflake(), 11, call.json)
        message = self._message(thread["id"], call.json.get("message") or {}, call.files, message_id=thread["id"])
        self.messages[thread["id"]].append(message)
        return {**thread, "message": self._public(message)}

    async def _get_member(self, call: Recorded, guild_id: str, user_id: str) -> Any:
        if user_id == self.bot_user_id:
            return self.bot_member()
        name = next((n for n, u in self.users.items() if u["id"] == user_id), None)
        if name is None:
            raise Refused(404, 10007, "Unknown Member")
        return self.member(name)

    ROUTES: ClassVar[list[Route]] = [
        (r"/users/@me", "GET", _me),
        (r"/users/@me/channels", "POST", _open_dm),
        (r"/oauth2/applications/@me", "GET", _application),
        (r"/applications/\d+/commands", "PUT", _sync),
        (r"/applications/\d+/guilds/(\d+)/commands", "PUT", _sync),
        (r"/channels/(\d+)/messages", "POST", _create_message),
        (r"/channels/(\d+)/messages", "GET", _get_messages),
        (r"/channels/(\d+)/messages/(\d+)", "PATCH", _edit_message),
        (r"/channels/(\d+)/messages/(\d+)", "GET", _get_message),
        (r"/channels/(\d+)/messages/(\d+)", "DELETE", _delete_message),
        (r"/channels/(\d+)/messages/(\d+)/threads", "POST", _start_thread),
        (r"/channels/(\d+)/threads", "POST", _create_thread),
        (r"/channels/(\d+)", "GET", _get_channel),
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

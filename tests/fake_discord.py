"""A protocol-level fake of Discord: REST, the gateway websocket and the attachment CDN, on 127.0.0.1.

It runs all of discord.py's real code (see shared/notes/testing-discord.md) and enforces what real Discord
enforces and the bot depends on: permissions, upload limits, no threads in forums or threads, deleted channels,
message nonces, the first followup after a defer replacing the loading message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import discord
from aiohttp import web

from bot.serving import serve

JSON = "application/json"  # exactly: discord.py fails on "application/json; charset=utf-8"
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
BOT_PERMISSIONS = P(
    view_channel=True,
    send_messages=True,
    read_message_history=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    attach_files=True,
    embed_links=True,
)
MODERATOR_PERMISSIONS = P(manage_guild=True, manage_messages=True)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


@dataclass
class Recorded:
    """One REST request the fake received."""

    method: str
    path: str
    json: Any
    files: list[tuple[str, bytes]]


@dataclass
class Interaction:
    """One interaction the fake sent, and what the bot answered."""

    id: str
    token: str
    payload: dict[str, Any]
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # @original first (once it exists), then followups
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at: float = field(default_factory=time.perf_counter)  # when the gateway event went out
    first_answer_at: float | None = None  # when the bot's first callback arrived

    @property
    def deferred(self) -> bool:
        return any(c["type"] in (5, 6) for c in self.callbacks)

    @property
    def modal(self) -> dict[str, Any] | None:
        return next((c["data"] for c in self.callbacks if c["type"] == 9), None)

    def texts(self) -> list[str]:
        return [m["content"] for m in self.messages]

    def ephemeral(self, index: int = -1) -> bool:
        return bool(self.messages[index]["flags"] & 64)


class FakeDiscord:
    """One guild with members, roles and channels; a bot logs in with `token`."""

    def __init__(self, *, filesize_limit: int = 10 * 1024 * 1024) -> None:
        self._ids = itertools.count(1_300_000_000_000_000_000)
        self.token = "fake-bot-token"
        self.application_id = self.snowflake()
        self.bot_user = self._user("video-bot", bot=True)
        self.guild_id = self.snowflake()
        self.filesize_limit = filesize_limit
        self.requests: list[Recorded] = []
        self.unexpected: list[str] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.deleted_channels: set[str] = set()
        self.interactions: dict[str, Interaction] = {}
        self.files: dict[str, bytes] = {}  # CDN: attachment id -> bytes
        self.bot_permissions: dict[str, int] = {}  # per channel, overriding BOT_PERMISSIONS
        self.identified = asyncio.Event()
        self._faults: list[tuple[str, re.Pattern[str], int, int, str, list[int]]] = []
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = 0
        self.moderator_role = self.snowflake()
        self.roles = [
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
        self.general = self.add_channel("general", 0)
        self.forum = self.add_channel("showcase", 15)
        self.forum_post = self.add_channel("my forum post", 11, parent=self.forum)
        self.log_channel = self.add_channel("mod-log", 0)
        self.app = web.Application(client_max_size=200 * 1024 * 1024)
        self.app.router.add_get("/gateway", self._gateway)
        self.app.router.add_get("/cdn/{attachment}/{filename}", self._cdn)
        self.app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- world --------------------------------------------------------------------------------------------

    def snowflake(self) -> str:
        return str(next(self._ids))

    def _user(self, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": self.snowflake(),
            "username": name,
            "discriminator": "0",
            "global_name": name,
            "avatar": None,
            "bot": bot,
        }

    def add_channel(self, name: str, kind: int, *, parent: str | None = None) -> str:
        channel_id = self.snowflake()
        channel: dict[str, Any] = {
            "id": channel_id,
            "type": kind,
            "guild_id": self.guild_id,
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
        if kind in (10, 11, 12):
            channel.update(
                owner_id=self.users["alice"]["id"],
                message_count=0,
                member_count=1,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": now_iso(),
                    "locked": False,
                },
            )
        self.channels[channel_id] = channel
        self.messages[channel_id] = []
        return channel_id

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
        return self.bot_permissions.get(
            channel_id, self.bot_permissions.get(channel.get("parent_id") or "", BOT_PERMISSIONS.value)
        )

    def guild_payload(self) -> dict[str, Any]:
        members = [self.member(n) for n in self.users] + [
            {"user": self.bot_user, "roles": [], "joined_at": now_iso(), "deaf": False, "mute": False, "flags": 0}
        ]
        threads = [c for c in self.channels.values() if c["type"] in (10, 11, 12)]
        return {
            "id": self.guild_id,
            "name": "Test server",
            "icon": None,
            "owner_id": self.users["mod"]["id"],
            "roles": self.roles,
            "emojis": [],
            "stickers": [],
            "features": [],
            "member_count": len(members),
            "members": members,
            "channels": [c for c in self.channels.values() if c not in threads],
            "threads": threads,
            "voice_states": [],
            "presences": [],
            "large": False,
            "unavailable": False,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "verification_level": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "afk_timeout": 300,
            "system_channel_id": None,
            "joined_at": now_iso(),
        }

    def add_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        attachment_id = self.snowflake()
        self.files[attachment_id] = data
        url = f"http://127.0.0.1:{self.port}/cdn/{attachment_id}/{filename}"
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
        attachments: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> dict[str, Any]:
        """Put a message in a channel as if a member had posted it (attachments from `add_attachment`)."""
        message = self._message(channel_id, {"content": content}, [], author=author)
        message["attachments"] = list(attachments)
        self.messages[channel_id].append(message)
        return message

    def delete_channel(self, channel_id: str) -> None:
        self.deleted_channels.add(channel_id)
        self.channels.pop(channel_id, None)

    def fail_next(
        self, method: str, path_regex: str, status: int, code: int = 0, message: str = "", times: int = 1
    ) -> None:
        self._faults.append((method, re.compile(path_regex), status, code, message, [times]))

    def threads(self) -> list[dict[str, Any]]:
        return [c for c in self.channels.values() if c["type"] == 11 and c["parent_id"] == self.general]

    def posted(self, method: str = "POST", pattern: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner, self.port = await serve(self.app, "127.0.0.1", 0)

    async def close(self) -> None:
        for socket in list(self._sockets):
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
        """Close the bot's websocket with a resumable code, as Discord does now and then."""
        for socket in list(self._sockets):
            await socket.close(code=4000)

    # --- gateway ------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}}))
        try:
            async for frame in socket:
                payload = json.loads(frame.data)
                if payload["op"] == 1:
                    await socket.send_str(json.dumps({"op": 11}))
                elif payload["op"] == 2:
                    if payload["d"]["token"] != self.token:
                        await socket.close(code=4004)
                        break
                    await self._send(
                        socket,
                        "READY",
                        {
                            "v": 10,
                            "user": self.bot_user,
                            "guilds": [{"id": self.guild_id, "unavailable": True}],
                            "session_id": "fake-session",
                            "resume_gateway_url": self.gateway_url,
                            "application": {"id": self.application_id, "flags": 0},
                            "private_channels": [],
                        },
                    )
                    await self._send(socket, "GUILD_CREATE", self.guild_payload())
                    self.identified.set()
                elif payload["op"] == 6:
                    await self._send(socket, "RESUMED", {})
        finally:
            self._sockets.remove(socket)
        return socket

    async def _send(self, socket: web.WebSocketResponse, event: str, data: Any) -> None:
        self._seq += 1
        await socket.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))

    async def dispatch(self, event: str, data: Any) -> None:
        for socket in list(self._sockets):
            await self._send(socket, event, data)

    async def wait_ready(self, within: float = 10) -> None:
        await asyncio.wait_for(self.identified.wait(), within)

    # --- interactions -------------------------------------------------------------------------------------

    async def _interact(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user: str,
        channel: str | None,
        message: dict[str, Any] | None = None,
        attachment_size_limit: int | None = None,
    ) -> Interaction:
        channel_id = channel or self.general
        permissions = self.permissions_of(user)
        payload: dict[str, Any] = {
            "id": self.snowflake(),
            "application_id": self.application_id,
            "type": kind,
            "data": data,
            "guild_id": self.guild_id,
            "guild": {"id": self.guild_id, "locale": "en-US", "features": []},
            "channel": self.channels[channel_id],
            "channel_id": channel_id,
            "member": {**self.member(user), "permissions": str(permissions)},
            "token": f"itoken-{self.snowflake()}",
            "version": 1,
            "app_permissions": str(self.bot_permissions_in(channel_id)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id},
            "context": 0,
            "attachment_size_limit": attachment_size_limit or self.filesize_limit,
        }
        if message is not None:
            payload["message"] = message
        interaction = Interaction(payload["id"], payload["token"], payload)
        self.interactions[interaction.id] = interaction
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        sub: str | None = None,
        user: str = "alice",
        channel: str | None = None,
        attachments: list[dict[str, Any]] = (),  # type: ignore[assignment]
        attachment_size_limit: int | None = None,
        types: dict[str, int] | None = None,
    ) -> Interaction:
        """Run `/name [sub] option:value ...`; attachments are passed as option values (their payloads)."""
        resolved: dict[str, Any] = {}
        built = []
        for key, value in (options or {}).items():
            if isinstance(value, dict) and "filename" in value:
                resolved.setdefault("attachments", {})[value["id"]] = value
                built.append({"name": key, "type": 11, "value": value["id"]})
            elif isinstance(value, dict) and "username" in value:  # a user: resolve as a member of the guild
                member_name = value["username"]
                resolved.setdefault("users", {})[value["id"]] = value
                resolved.setdefault("members", {})[value["id"]] = {
                    k: v for k, v in self.member(member_name).items() if k != "user"
                } | {"permissions": "0"}
                built.append({"name": key, "type": 6, "value": value["id"]})
            else:
                kind = (types or {}).get(key) or (
                    5
                    if isinstance(value, bool)
                    else 4
                    if isinstance(value, int)
                    else 10
                    if isinstance(value, float)
                    else 3
                )
                if kind == 8:
                    role = next(r for r in self.roles if r["id"] == value)
                    resolved.setdefault("roles", {})[value] = role
                if kind == 7:
                    resolved.setdefault("channels", {})[value] = {**self.channels[value], "permissions": "0"}
                built.append({"name": key, "type": kind, "value": value})
        data: dict[str, Any] = {
            "id": self.snowflake(),
            "name": name,
            "type": 1,
            "guild_id": self.guild_id,
            "options": [{"name": sub, "type": 1, "options": built}] if sub else built,
        }
        if resolved:
            data["resolved"] = resolved
        return await self._interact(2, data, user=user, channel=channel, attachment_size_limit=attachment_size_limit)

    async def message_menu(
        self, name: str, message: dict[str, Any], *, user: str = "alice", channel: str | None = None
    ) -> Interaction:
        data = {
            "id": self.snowflake(),
            "name": name,
            "type": 3,
            "target_id": message["id"],
            "resolved": {"messages": {message["id"]: self._public(message)}},
        }
        return await self._interact(2, data, user=user, channel=channel or message["channel_id"])

    async def press(self, custom_id: str, message: dict[str, Any], *, user: str = "alice") -> Interaction:
        return await self._interact(
            3,
            {"custom_id": custom_id, "component_type": 2},
            user=user,
            channel=message["channel_id"],
            message=self._public(message),
        )

    async def submit_modal(self, shown: Interaction, values: dict[str, str], *, user: str = "alice") -> Interaction:
        """Fill the modal the bot showed, by field label, and submit it."""
        modal = shown.modal
        assert modal is not None, "the bot showed no modal"
        rows = []
        for row in modal["components"]:
            inner = row.get("components") or [row.get("component")]
            for item in inner:
                value = values.get(item.get("label", ""), item.get("value") or "")
                rows.append({"type": 1, "components": [{"type": 4, "custom_id": item["custom_id"], "value": value}]})
        data = {"custom_id": modal["custom_id"], "components": rows}
        return await self._interact(5, data, user=user, channel=shown.payload["channel_id"])

    # --- REST ---------------------------------------------------------------------------------------------

    @staticmethod
    def _json(body: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=json.dumps(body).encode(), content_type=JSON)

    def _error(self, status: int, code: int, message: str) -> web.Response:
        return self._json({"message": message, "code": code}, status)

    async def _read(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        files: list[tuple[str, bytes]] = []
        if request.content_type == "multipart/form-data":
            payload: Any = None
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    payload = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    files.append((part.filename or "", bytes(await part.read())))  # type: ignore[union-attr]
            return payload, files
        if request.can_read_body:
            raw = await request.read()
            return (json.loads(raw) if raw else None), files
        return None, files

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        body, files = await self._read(request)
        self.requests.append(Recorded(request.method, path, body, files))
        for fault in self._faults:
            method, pattern, status, code, message, left = fault
            if method == request.method and pattern.search(path):
                left[0] -= 1
                if left[0] <= 0:
                    self._faults.remove(fault)
                return self._error(status, code, message or f"{status} injected")
        if (
            not path.startswith(("/interactions/", "/webhooks/"))
            and request.headers.get("Authorization") != f"Bot {self.token}"
        ):
            return self._error(401, 0, "401: Unauthorized")
        for pattern, method, handler in self._routes:
            match = re.fullmatch(pattern, path)
            if match and method == request.method:
                return await handler(self, request, body, files, *match.groups())
        self.unexpected.append(f"{request.method} {path}")
        return self._error(404, 0, "404: Not Found")

    async def _me(self, request: web.Request, body: Any, files: Any) -> web.Response:
        return self._json(self.bot_user)

    async def _application(self, request: web.Request, body: Any, files: Any) -> web.Response:
        return self._json(
            {
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
        )

    async def _sync(self, request: web.Request, body: Any, files: Any, *guild: str) -> web.Response:
        return self._json(
            [
                {
                    **c,
                    "id": self.snowflake(),
                    "application_id": self.application_id,
                    "version": "1",
                    "default_member_permissions": c.get("default_member_permissions"),
                    "description": c.get("description", ""),
                }
                for c in body
            ]
        )

    def _message(
        self,
        channel_id: str,
        body: dict[str, Any],
        files: list[tuple[str, bytes]],
        author: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        attachments = []
        for index, (filename, data) in enumerate(files):
            attachment = self.add_attachment(filename, data)
            attachment["index"] = index
            attachments.append(attachment)
        return {
            "id": message_id or self.snowflake(),
            "channel_id": channel_id,
            "guild_id": self.guild_id,
            "author": author or self.bot_user,
            "content": body.get("content") or "",
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "attachments": attachments,
            "files": files,
            "flags": body.get("flags") or 0,
            "allowed_mentions": body.get("allowed_mentions"),
            "nonce": body.get("nonce"),
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": False,
            "type": 0,
            "timestamp": now_iso(),
            "edited_timestamp": None,
        }

    @staticmethod
    def _public(message: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if k not in ("files", "allowed_mentions")}

    def _check_upload(self, files: list[tuple[str, bytes]], limit: int) -> web.Response | None:
        if any(len(data) > limit for _, data in files):
            return self._error(413, 40005, "Request entity too large")
        return None

    async def _create_message(self, request: web.Request, body: Any, files: Any, channel_id: str) -> web.Response:
        if channel_id in self.deleted_channels or channel_id not in self.channels:
            return self._error(404, 10003, "Unknown Channel")
        channel = self.channels[channel_id]
        if channel["type"] in (15, 16):
            return self._error(400, 50008, "Cannot send messages in a non-text channel")
        permissions = P(self.bot_permissions_in(channel_id))
        allowed = permissions.send_messages_in_threads if channel["type"] in (10, 11, 12) else permissions.send_messages
        if not allowed or (files and not permissions.attach_files):
            return self._error(403, 50013, "Missing Permissions")
        if (too_big := self._check_upload(files, self.filesize_limit)) is not None:
            return too_big
        if body.get("enforce_nonce") and body.get("nonce"):
            for earlier in self.messages[channel_id]:
                if earlier["nonce"] == body["nonce"]:
                    return self._json(self._public(earlier))
        message = self._message(channel_id, body, files)
        self.messages[channel_id].append(message)
        return self._json(self._public(message))

    def _find(self, channel_id: str, message_id: str) -> dict[str, Any] | None:
        return next((m for m in self.messages.get(channel_id, []) if m["id"] == message_id), None)

    async def _edit_message(
        self, request: web.Request, body: Any, files: Any, channel_id: str, message_id: str
    ) -> web.Response:
        if channel_id in self.deleted_channels:
            return self._error(404, 10003, "Unknown Channel")
        message = self._find(channel_id, message_id)
        if message is None:
            return self._error(404, 10008, "Unknown Message")
        for key in ("content", "embeds", "components", "flags", "allowed_mentions"):
            if key in body:
                message[key] = body[key]
        message["edited_timestamp"] = now_iso()
        return self._json(self._public(message))

    async def _delete_message(
        self, request: web.Request, body: Any, files: Any, channel_id: str, message_id: str
    ) -> web.Response:
        message = self._find(channel_id, message_id)
        if message is None:
            return self._error(404, 10008, "Unknown Message")
        self.messages[channel_id].remove(message)
        return web.Response(status=204)

    async def _get_messages(self, request: web.Request, body: Any, files: Any, channel_id: str) -> web.Response:
        if channel_id not in self.channels:
            return self._error(404, 10003, "Unknown Channel")
        limit = int(request.query.get("limit", 50))
        return self._json([self._public(m) for m in reversed(self.messages[channel_id][-limit:])])

    async def _get_channel(self, request: web.Request, body: Any, files: Any, channel_id: str) -> web.Response:
        if channel_id not in self.channels:
            return self._error(404, 10003, "Unknown Channel")
        return self._json(self.channels[channel_id])

    async def _start_thread(
        self, request: web.Request, body: Any, files: Any, channel_id: str, message_id: str
    ) -> web.Response:
        channel = self.channels.get(channel_id)
        if channel is None:
            return self._error(404, 10003, "Unknown Channel")
        if channel["type"] not in (0, 5):
            return self._error(400, 50024, "Cannot execute action on this channel type")
        if not P(self.bot_permissions_in(channel_id)).create_public_threads:
            return self._error(403, 50013, "Missing Permissions")
        if self._find(channel_id, message_id) is None:
            return self._error(404, 10008, "Unknown Message")
        if message_id in self.channels:
            return self._error(400, 160004, "A thread has already been created for this message")
        thread = {
            "id": message_id,
            "type": 11,
            "guild_id": self.guild_id,
            "parent_id": channel_id,
            "name": body["name"],
            "owner_id": self.bot_user["id"],
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "last_message_id": None,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": body.get("auto_archive_duration", 1440),
                "archive_timestamp": now_iso(),
                "locked": False,
            },
        }
        self.channels[message_id] = thread
        self.messages[message_id] = []
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return self._json(thread, 201)

    async def _callback(
        self, request: web.Request, body: Any, files: Any, interaction_id: str, token: str
    ) -> web.Response:
        interaction = self.interactions.get(interaction_id)
        if interaction is None or interaction.token != token:
            return self._error(404, 10062, "Unknown interaction")
        if interaction.callbacks:
            return self._error(400, 40060, "Interaction has already been acknowledged.")
        interaction.callbacks.append(body)
        interaction.first_answer_at = time.perf_counter()
        response: dict[str, Any] = {"interaction": {"id": interaction_id, "type": interaction.payload["type"]}}
        data = body.get("data") or {}
        if body["type"] == 4:  # a message
            if (too_big := self._check_upload(files, interaction.payload["attachment_size_limit"])) is not None:
                return too_big
            message = self._message(interaction.payload["channel_id"], data, files)
            interaction.messages.append(message)
            response["resource"] = {"type": 4, "message": self._public(message)}
        elif body["type"] == 5:  # "thinking": the loading message becomes @original
            message = self._message(interaction.payload["channel_id"], {"flags": data.get("flags", 0) | 128}, [])
            interaction.messages.append(message)
            response["resource"] = {"type": 5, "message": self._public(message)}
        elif body["type"] == 7:  # update the message the component is on
            target = interaction.payload["message"]
            stored = self._find(target["channel_id"], target["id"]) or target
            for key in ("content", "embeds", "components"):
                if key in data:
                    stored[key] = data[key]
            interaction.messages.append(stored)
        interaction.answered.set()
        return self._json(response)

    def _webhook_interaction(self, token: str) -> Interaction | None:
        return next((i for i in self.interactions.values() if i.token == token), None)

    async def _followup(self, request: web.Request, body: Any, files: Any, app_id: str, token: str) -> web.Response:
        interaction = self._webhook_interaction(token)
        if interaction is None:
            return self._error(404, 10015, "Unknown Webhook")
        if (too_big := self._check_upload(files, interaction.payload["attachment_size_limit"])) is not None:
            return too_big
        loading = next((m for m in interaction.messages if m["flags"] & 128), None)
        if loading is not None:  # the first followup after a defer replaces the loading message, flags and all
            loading.update(self._message(loading["channel_id"], body, files, message_id=loading["id"]))
            loading["flags"] = (loading["flags"] & 64) | ((body.get("flags") or 0) & ~128)
            if interaction.callbacks and (interaction.callbacks[0].get("data") or {}).get("flags", 0) & 64:
                loading["flags"] |= 64
            message = loading
        else:
            message = self._message(interaction.payload["channel_id"], body, files)
            interaction.messages.append(message)
        interaction.answered.set()
        return self._json(self._public(message))

    async def _edit_original(
        self, request: web.Request, body: Any, files: Any, app_id: str, token: str, message_id: str
    ) -> web.Response:
        interaction = self._webhook_interaction(token)
        if interaction is None or not interaction.messages:
            return self._error(404, 10008, "Unknown Message")
        message = (
            interaction.messages[0]
            if message_id == "@original"
            else next((m for m in interaction.messages if m["id"] == message_id), None)
        )
        if message is None:
            return self._error(404, 10008, "Unknown Message")
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = body[key]
        message["flags"] &= ~128
        return self._json(self._public(message))

    async def _delete_original(
        self, request: web.Request, body: Any, files: Any, app_id: str, token: str, message_id: str
    ) -> web.Response:
        interaction = self._webhook_interaction(token)
        if interaction is not None and interaction.messages:
            interaction.messages.pop(0)
        return web.Response(status=204)

    async def _get_member(
        self, request: web.Request, body: Any, files: Any, guild_id: str, user_id: str
    ) -> web.Response:
        name = next((n for n, u in self.users.items() if u["id"] == user_id), None)
        if name is None:
            return self._error(404, 10007, "Unknown Member")
        return self._json(self.member(name))

    _routes: ClassVar[list[tuple[str, str, Any]]] = [
        (r"/users/@me", "GET", _me),
        (r"/oauth2/applications/@me", "GET", _application),
        (r"/applications/\d+/commands", "PUT", _sync),
        (r"/applications/\d+/guilds/(\d+)/commands", "PUT", _sync),
        (r"/channels/(\d+)/messages", "POST", _create_message),
        (r"/channels/(\d+)/messages", "GET", _get_messages),
        (r"/channels/(\d+)/messages/(\d+)", "PATCH", _edit_message),
        (r"/channels/(\d+)/messages/(\d+)", "DELETE", _delete_message),
        (r"/channels/(\d+)/messages/(\d+)/threads", "POST", _start_thread),
        (r"/channels/(\d+)", "GET", _get_channel),
        (r"/interactions/(\d+)/([^/]+)/callback", "POST", _callback),
        (r"/webhooks/(\d+)/([^/]+)", "POST", _followup),
        (r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "PATCH", _edit_original),
        (r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "DELETE", _delete_original),
        (r"/guilds/(\d+)/members/(\d+)", "GET", _get_member),
    ]

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["attachment"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")


async def wait_until(predicate: Any, within: float = 5.0, interval: float = 0.01) -> None:
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

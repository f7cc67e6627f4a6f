"""The world the fake Discord holds: guilds, members, roles and their permissions, channels and threads, messages
and attachments, as the REST routes and the gateway show them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import discord
from aiohttp import web

from tests.fakes.discord.wire import (
    MISSING_ACCESS,
    UNKNOWN_CHANNEL,
    UNKNOWN_MESSAGE,
    Files,
    MiB,
    Refused,
    now_iso,
)

FILESIZE_LIMITS = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}  # by guild premium tier, as discord.py
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


class World:
    """One guild with members, roles and channels (more with `add_guild`)."""

    def __init__(self, *, filesize_limit: int | None = None, premium_tier: int = 0, shards: int = 1) -> None:
        self._ids = itertools.count(1_300_000_000_000_000_000)
        self.token = "fake-bot-token"
        self.application_id = self.snowflake()
        self.bot_user = self._user("video-bot", bot=True)
        self.guild_id = self.snowflake()
        self.shard_count = shards  # what GET /gateway/bot recommends
        self.guild_names = {self.guild_id: "Test server"}  # every guild, the first one `guild_id`
        self.without_bot: set[str] = set()  # guilds whose members use the app as a user install; the bot is not in
        self.group_dms: set[str] = set()  # members' group DMs where they use their user install (the bot is not in)
        self.premium_tier = premium_tier
        self.filesize_limit = filesize_limit or FILESIZE_LIMITS[premium_tier]  # what uploads are checked against
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}  # per channel (threads are channels), oldest first
        self.deleted_channels: set[str] = set()
        self.dm_channels: dict[str, str] = {}  # direct-message channel id -> the user's id
        self.closed_dms: set[str] = set()  # user ids whose direct messages refuse the bot (403, 50007)
        self.files: dict[str, bytes] = {}  # CDN: attachment id -> bytes
        # CDN downloads being served now and the most at once; while `cdn_gate` is set but not open, they wait on it.
        self.cdn_in_flight = 0
        self.cdn_peak = 0
        self.cdn_gate: asyncio.Event | None = None
        self.bot_permissions: dict[str, int] = {}  # per channel, overriding BOT_PERMISSIONS
        self.bot_roles: list[str] = []  # role ids the bot member has (besides @everyone)
        # When True, GUILD_CREATE also shows `bot_permissions` as the bot's member overwrites, so the bot's cache
        # (`channel.permissions_for(guild.me)`) knows them; set it before the bot starts.
        self.bot_overwrites = False
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
        self.app = web.Application(client_max_size=200 * MiB)  # each part adds its routes
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

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

    def add_guild(self, name: str, *, shard: int | None = None, bot: bool = True) -> str:
        """Another guild with the same members and a text channel `{name}-general`; with `shard`, one whose id
        falls on that shard of `shard_count`; with `bot=False`, one the bot is not in (no GUILD_CREATE, its channels
        refuse the bot: Missing Access), where members reach it only through their user install. Returns its id."""
        block = max(int(g) >> 22 for g in self.guild_names) + 1  # ids above every snowflake made so far
        while shard is not None and block % self.shard_count != shard:
            block += 1
        guild_id = str(block << 22)
        self.guild_names[guild_id] = name
        if not bot:
            self.without_bot.add(guild_id)
        self.add_channel(f"{name}-general", 0, guild=guild_id)
        return guild_id

    def elsewhere(self) -> str:
        """The text channel of a server the bot is not in (made on first use) where members use the user install."""
        guild_id = next(iter(self.without_bot), None) or self.add_guild("elsewhere", bot=False)
        return self.text_channel(guild_id)

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

    def threads(self, parent: str | None = None) -> list[dict[str, Any]]:
        """Public threads in `parent` (default: general), oldest first."""
        parent = self.channel_id(parent) if parent else self.general
        return [c for c in self.channels.values() if c["type"] == 11 and c["parent_id"] == parent]

    # --- messages --------------------------------------------------------------------------------------------

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
        if channel_id in self.group_dms:
            raise Refused(*MISSING_ACCESS)
        if channel_id in self.dm_channels:  # read, edited and deleted in like any channel; no threads
            user = next(u for u in self.users.values() if u["id"] == self.dm_channels[channel_id])
            return {"id": channel_id, "type": 1, "recipients": [user], "flags": 0}
        if channel_id not in self.channels:
            raise Refused(*UNKNOWN_CHANNEL)
        if self.channels[channel_id]["guild_id"] in self.without_bot:
            raise Refused(*MISSING_ACCESS)
        return self.channels[channel_id]

    def _find(self, channel_id: str, message_id: str) -> dict[str, Any] | None:
        return next((m for m in self.messages.get(channel_id, []) if m["id"] == message_id), None)

    def _stored(self, channel_id: str, message_id: str) -> dict[str, Any]:
        self._channel(channel_id)
        if (message := self._find(channel_id, message_id)) is None:
            raise Refused(*UNKNOWN_MESSAGE)
        return message

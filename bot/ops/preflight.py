"""The owner's preflight (`python -m bot check`): settings, database, Kling key, and the bot's Discord setup.

Discord is asked over plain REST with aiohttp, so this module does not need discord.py's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from bot.config import Settings
from bot.provider.errors import KlingBadRequest, KlingError
from bot.provider.kling import KlingClient
from bot.resources import open_resources
from bot.storage.interface import Storage
from bot.storage.sqlite import StoreUnavailable

Status = Literal["ok", "warn", "fail"]

VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 64) - 1  # Discord's permissions are a bit field; every bit set stands for "everything"
NEEDED = {
    VIEW_CHANNEL: "View Channel",
    SEND_MESSAGES: "Send Messages",
    SEND_MESSAGES_IN_THREADS: "Send Messages in Threads",
    CREATE_PUBLIC_THREADS: "Create Public Threads",
    EMBED_LINKS: "Embed Links",
    ATTACH_FILES: "Attach Files",
    READ_MESSAGE_HISTORY: "Read Message History",
}
NEEDED_BITS = sum(NEEDED)
TEXT_CHANNELS = (0, 5)  # text and announcement channels: where members use /video and the bot opens threads
REQUIRED_COMMANDS = ("video", "quota", "quota-admin")
SHOWN_CHANNELS = 3  # channel names listed per line; the rest are counted
USER_AGENT = "DiscordBot (https://github.com/kling-video-bot, 0.1)"  # the form Discord asks bots to send


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One line of the preflight: what was checked, whether it passed, and what the owner should know."""

    name: str
    status: Status
    detail: str

    def line(self) -> str:
        """The item as printed: a fixed-width mark first, so the eye finds the failures."""
        mark = {"ok": "ok:  ", "warn": "warn:", "fail": "FAIL:"}[self.status]
        return f"{mark} {self.name}: {self.detail}"


# --- permissions (pure) ---------------------------------------------------------------------------------------


def channel_permissions(
    *,
    guild_id: str,
    owner_id: str | None,
    roles: Mapping[str, int],
    member_id: str,
    member_roles: Iterable[str],
    overwrites: Sequence[Mapping[str, Any]],
) -> int:
    """A member's permissions in one channel, computed as Discord does (topics/permissions): base from @everyone
    and the member's roles, then the @everyone overwrite, the role overwrites combined, the member overwrite."""
    if member_id == owner_id:
        return ALL_PERMISSIONS
    member_roles = set(member_roles) - {guild_id}  # @everyone is not a role overwrite, even if listed
    base = roles.get(guild_id, 0)
    for role_id in member_roles:
        base |= roles.get(role_id, 0)
    if base & ADMINISTRATOR:
        return ALL_PERMISSIONS  # administrators ignore overwrites
    by_target = {(str(o["id"]), int(o.get("type", 0))): o for o in overwrites}
    permissions = base
    if everyone := by_target.get((guild_id, 0)):
        permissions = (permissions & ~int(everyone["deny"])) | int(everyone["allow"])
    allow = deny = 0
    for role_id in member_roles:
        if role := by_target.get((role_id, 0)):
            allow |= int(role["allow"])
            deny |= int(role["deny"])
    permissions = (permissions & ~deny) | allow
    if member := by_target.get((member_id, 1)):
        permissions = (permissions & ~int(member["deny"])) | int(member["allow"])
    # Implicit denials: a channel one cannot see grants nothing; without Send Messages, no files or embeds.
    if not permissions & VIEW_CHANNEL:
        return 0
    if not permissions & SEND_MESSAGES:
        permissions &= ~(ATTACH_FILES | EMBED_LINKS)
    return permissions


def missing_permissions(permissions: int) -> list[str]:
    """The names of the permissions the bot needs in a text channel and lacks, in a fixed order."""
    return [name for bit, name in NEEDED.items() if not permissions & bit]


# --- Discord over REST ----------------------------------------------------------------------------------------


class DiscordError(Exception):
    """Discord answered with an error; the message is Discord's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status


class DiscordUnreachable(Exception):
    """No answer from Discord: connection refused, time-out, or something that is not its JSON."""


class DiscordRest:
    """GET requests to Discord's REST API as the bot; the token only ever goes into the Authorization header."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, timeout: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bot {token}", "User-Agent": USER_AGENT}
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        return f"DiscordRest({self._base!r})"  # never the headers: they hold the token

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """One GET; a rate limit is waited out once (when short), other errors raise."""
        for attempt in range(2):
            try:
                async with self._session.get(
                    self._base + path, params=params, headers=self._headers, timeout=self._timeout
                ) as response:
                    status = response.status
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        body = None
            except TimeoutError:
                raise DiscordUnreachable(f"no answer within {self._timeout.total:g}s") from None
            except aiohttp.ClientError as exc:
                raise DiscordUnreachable(f"connection failed ({type(exc).__name__})") from None
            if status == 429 and attempt == 0:
                retry_after = float(body.get("retry_after", 1.0)) if isinstance(body, dict) else 1.0
                if retry_after <= 10:
                    await asyncio.sleep(retry_after)
                    continue
            if status >= 400:
                message = body.get("message") if isinstance(body, dict) else None
                raise DiscordError(status, str(message or "error"))
            if body is None:
                raise DiscordUnreachable(f"the answer to GET {path} is not JSON (HTTP {status})")
            return body
        raise AssertionError("unreachable")  # pragma: no cover


class TokenRefused(Exception):
    """Discord answered 401: the token is wrong or was reset."""


async def _get(discord: DiscordRest, path: str, params: Mapping[str, str] | None = None) -> Any:
    """A GET where 401 means the token, which ends every later Discord check."""
    try:
        return await discord.get(path, params)
    except DiscordError as exc:
        if exc.status == 401:
            raise TokenRefused() from None
        raise


# --- the checks -----------------------------------------------------------------------------------------------


async def preflight(settings: Settings) -> list[CheckItem]:
    """Open what the bot opens and run every check; a database that will not open is a failed line."""
    items = [CheckItem("settings", "ok", "valid")]
    async with contextlib.AsyncExitStack() as stack:
        try:
            resources = await stack.enter_async_context(open_resources(settings))
        except (OSError, sqlite3.Error, RuntimeError, StoreUnavailable) as exc:
            items.append(CheckItem("database", "fail", f"cannot open {settings.database_label}: {exc}"))
            return items
        items += await run_checks(settings, resources.session, resources.store, resources.kling)
    return items


async def run_checks(
    settings: Settings, session: aiohttp.ClientSession, store: Storage, kling: KlingClient
) -> list[CheckItem]:
    """The database, the Kling key, comma-separated queries, then Discord (skipped without DISCORD_TOKEN)."""
    items = [await _check_database(settings, store)]
    items += await _check_kling(settings, kling)
    token = settings.discord_token.get_secret_value()
    if not token:
        items.append(CheckItem("discord", "warn", "DISCORD_TOKEN is empty: Discord checks skipped"))
        return items
    discord = DiscordRest(session, settings.discord_api_base_url, token, settings.api_timeout_seconds)
    try:
        await _check_discord(settings, discord, items)
    except TokenRefused:
        items.append(
            CheckItem(
                "discord",
                "fail",
                "Discord refused DISCORD_TOKEN (HTTP 401): copy it again from the Developer Portal's Bot page",
            )
        )
    except DiscordUnreachable as exc:
        items.append(CheckItem("discord", "fail", f"cannot reach Discord at {settings.discord_api_base_url}: {exc}"))
    return items


async def _check_database(settings: Settings, store: Storage) -> CheckItem:
    try:
        jobs = sum((await store.count_by_status()).values())
    except sqlite3.Error as exc:
        return CheckItem("database", "fail", f"{settings.database_label} opens but cannot be read: {exc}")
    return CheckItem("database", "ok", f"opens at {settings.database_label} ({jobs} jobs)")


async def _check_kling(settings: Settings, kling: KlingClient) -> list[CheckItem]:
    root = settings.kling_api_root
    try:
        await kling.check_auth()  # a query for an unknown id: free
    except KlingError as exc:
        return [
            CheckItem("kling key", "fail", f"the Kling API at {root} refused: {exc}"),
            CheckItem("kling id lists", "warn", "not tried (the key check failed)"),
        ]
    items = [CheckItem("kling key", "ok", f"accepted by {root}")]
    try:
        await kling.ask_once(["0", "1"])  # two unknown ids: one request with task_ids=0,1
    except KlingBadRequest as exc:
        detail = f"comma-separated task ids refused ({exc}): the bot asks fewer ids at a time, down to one"
        items.append(CheckItem("kling id lists", "warn", detail))
    except KlingError as exc:
        items.append(CheckItem("kling id lists", "warn", f"could not tell: {exc}"))
    else:
        items.append(CheckItem("kling id lists", "ok", "comma-separated task ids accepted in one query"))
    return items


async def _check_discord(settings: Settings, discord: DiscordRest, items: list[CheckItem]) -> None:
    """Appends the application line, one line per server, and the commands line."""
    try:
        application = await _get(discord, "/oauth2/applications/@me")
        user = await _get(discord, "/users/@me")
    except DiscordError as exc:
        items.append(CheckItem("discord app", "fail", f"cannot read the application: {exc}"))
        return
    app_id, bot_id = str(application["id"]), str(user["id"])
    items.append(
        CheckItem("discord app", "ok", f"{application.get('name')} (id {app_id}), bot user {user.get('username')}")
    )
    guilds = await _guilds(discord)
    if not guilds:
        invite = (
            f"https://discord.com/oauth2/authorize?client_id={app_id}"
            f"&scope=bot+applications.commands&permissions={NEEDED_BITS}"
        )
        items.append(CheckItem("servers", "warn", f"the bot is in no server yet; invite it: {invite}"))
    for guild in guilds:
        items.append(await _check_guild(discord, guild, bot_id))
    items.append(await _check_commands(settings, discord, app_id))


async def _guilds(discord: DiscordRest) -> list[dict[str, Any]]:
    """Every server the bot is in (Discord pages them 200 at a time)."""
    guilds: list[dict[str, Any]] = []
    while True:
        params = {"limit": "200"} | ({"after": str(guilds[-1]["id"])} if guilds else {})
        page = await _get(discord, "/users/@me/guilds", params)
        guilds += page
        if len(page) < 200:
            return guilds


async def _check_guild(discord: DiscordRest, guild: Mapping[str, Any], bot_id: str) -> CheckItem:
    guild_id = str(guild["id"])
    name = f'server "{guild.get("name")}"'
    try:
        full = await _get(discord, f"/guilds/{guild_id}")
        member = await _get(discord, f"/guilds/{guild_id}/members/{bot_id}")
        channels = await _get(discord, f"/guilds/{guild_id}/channels")
    except DiscordError as exc:
        return CheckItem(name, "fail", f"cannot read its roles or channels: {exc}")
    roles = {str(r["id"]): int(r["permissions"]) for r in full.get("roles", [])}
    text = sorted((c for c in channels if c.get("type") in TEXT_CHANNELS), key=lambda c: c.get("position", 0))
    if not text:
        return CheckItem(name, "warn", "no text channels")
    lacking: dict[tuple[str, ...], list[str]] = {}
    for channel in text:
        permissions = channel_permissions(
            guild_id=guild_id,
            owner_id=str(full.get("owner_id")),
            roles=roles,
            member_id=bot_id,
            member_roles=[str(r) for r in member.get("roles", [])],
            overwrites=channel.get("permission_overwrites") or [],
        )
        if missing := missing_permissions(permissions):
            lacking.setdefault(tuple(missing), []).append(f"#{channel.get('name')}")
    if not lacking:
        return CheckItem(name, "ok", f"all permissions in its {len(text)} text channels")
    parts = []
    for lacks, names in lacking.items():
        shown = ", ".join(names[:SHOWN_CHANNELS])
        if len(names) > SHOWN_CHANNELS:
            shown += f" +{len(names) - SHOWN_CHANNELS} more"
        parts.append(f"lacks {', '.join(lacks)} in {len(names)}/{len(text)} text channels ({shown})")
    # Lacking something in every text channel leaves the bot nowhere to work fully.
    everywhere = sum(len(names) for names in lacking.values()) == len(text)
    return CheckItem(name, "fail" if everywhere else "warn", "; ".join(parts))


async def _check_commands(settings: Settings, discord: DiscordRest, app_id: str) -> CheckItem:
    places = [("globally", f"/applications/{app_id}/commands")]
    if guild_id := settings.discord_guild_id:
        places.append((f"in server {guild_id}", f"/applications/{app_id}/guilds/{guild_id}/commands"))
    found: dict[str, set[str]] = {}
    for where, path in places:
        try:
            found[where] = {str(c.get("name")) for c in await _get(discord, path)}
        except DiscordError as exc:
            return CheckItem("commands", "fail", f"cannot list the commands {where}: {exc}")
    for where, names in reversed(found.items()):  # the server's commands first: they are what DISCORD_GUILD_ID uses
        if set(REQUIRED_COMMANDS) <= names:
            return CheckItem("commands", "ok", f"{', '.join(REQUIRED_COMMANDS)} registered {where}")
    best = max(found.values(), key=lambda names: len(names & set(REQUIRED_COMMANDS)))
    missing = [c for c in REQUIRED_COMMANDS if c not in best]
    return CheckItem("commands", "fail", f"{', '.join(missing)} not registered: run `python -m bot sync`")

"""What the dashboard asks Discord over REST: the OAuth2 login (a member's own token) and the bot's own view of a
server and its member (the bot's token), so a member's right to manage a server is never taken from the login alone.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

log = logging.getLogger(__name__)

SCOPES = "identify guilds"
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5


class DiscordRefused(Exception):
    """Discord answered the login's or the bot's request with an error (the login cannot go on)."""


@dataclass(frozen=True, slots=True)
class LoginUser:
    """Who logged in, from `/users/@me`, and the servers their login says they manage (id to name)."""

    id: int
    name: str
    locale: str
    guilds: dict[int, str]


@dataclass(frozen=True, slots=True)
class ServerView:
    """A server as the bot sees it, and whether the member may manage it there."""

    id: int
    name: str
    manages: bool
    roles: dict[int, str]  # every role's id and name, @everyone aside


def manages_server(guild: dict[str, Any], member: dict[str, Any]) -> bool:
    """Manage Server from the bot's view: the owner, or @everyone's and the member's roles (Administrator
    counts as every permission)."""
    if str(guild.get("owner_id")) == str(member["user"]["id"]):
        return True
    held = {str(r) for r in member.get("roles", [])} | {str(guild["id"])}  # @everyone's id is the server's
    permissions = 0
    for role in guild.get("roles", []):
        if str(role["id"]) in held:
            permissions |= int(role["permissions"])
    return bool(permissions & (ADMINISTRATOR | MANAGE_GUILD))


class DiscordApi:
    """Discord's REST API as the dashboard uses it, over the bot's one HTTP session."""

    def __init__(
        self, session: aiohttp.ClientSession, api_base: str, bot_token: str, client_id: int, client_secret: str
    ) -> None:
        self.session = session
        self.api_base = api_base.rstrip("/")
        self.bot_token = bot_token
        self.client_id = client_id
        self.client_secret = client_secret

    def authorize_url(self, state: str, redirect_uri: str) -> str:
        """Discord's consent page (at the API's origin, as discord.com/oauth2/authorize), sending back a code."""
        parts = urlsplit(self.api_base)
        query = {"client_id": self.client_id, "response_type": "code", "scope": SCOPES, "state": state}
        return f"{parts.scheme}://{parts.netloc}/oauth2/authorize?{urlencode(query | {'redirect_uri': redirect_uri})}"

    async def _call(self, method: str, path: str, authorization: str, **options: Any) -> Any:
        headers = {"Authorization": authorization} if authorization else {}
        try:
            async with self.session.request(method, self.api_base + path, headers=headers, **options) as response:
                if response.status >= 400:
                    raise DiscordRefused(f"{method} {path}: HTTP {response.status}")
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise DiscordRefused(f"{method} {path}: {exc}") from exc

    async def login(self, code: str, redirect_uri: str) -> LoginUser:
        """The code Discord sent back exchanged for the member's token, then who they are and their servers."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        basic = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        token = await self._call("POST", "/oauth2/token", f"Basic {basic}", data=form)
        bearer = f"Bearer {token['access_token']}"
        me, guilds = await asyncio.gather(
            self._call("GET", "/users/@me", bearer), self._call("GET", "/users/@me/guilds", bearer)
        )
        return LoginUser(
            id=int(me["id"]),
            name=str(me.get("global_name") or me["username"]),
            locale=str(me.get("locale") or "en-US"),
            # Only the servers the login says the member may manage: the page asks the bot's view of each of these
            # again (two requests apiece), so a member of hundreds of servers costs no more than their own few.
            guilds={
                int(g["id"]): str(g["name"])
                for g in guilds
                if g.get("owner") or int(g.get("permissions") or 0) & (ADMINISTRATOR | MANAGE_GUILD)
            },
        )

    async def server(self, guild_id: int, user_id: int) -> ServerView | None:
        """The server and the member's right to manage it, as the bot sees them now; None when the bot is not
        there (or Discord does not answer)."""
        bot = f"Bot {self.bot_token}"
        try:
            guild = await self._call("GET", f"/guilds/{guild_id}", bot)
        except DiscordRefused as refused:
            log.info("dashboard: server %s is not visible to the bot: %s", guild_id, refused)
            return None
        try:
            member = await self._call("GET", f"/guilds/{guild_id}/members/{user_id}", bot)
        except DiscordRefused:
            member = None  # no longer a member there
        roles = {int(r["id"]): str(r["name"]) for r in guild.get("roles", []) if str(r["id"]) != str(guild_id)}
        manages = member is not None and manages_server(guild, member)
        return ServerView(int(guild["id"]), str(guild["name"]), manages, roles)

    async def member_roles(self, guild_id: int, user_ids: list[int]) -> dict[int, tuple[str, list[int]]]:
        """Each member's name and role ids in a server (the members no longer there are left out)."""
        bot = f"Bot {self.bot_token}"

        async def one(user_id: int) -> tuple[int, tuple[str, list[int]]] | None:
            try:
                member = await self._call("GET", f"/guilds/{guild_id}/members/{user_id}", bot)
            except DiscordRefused:
                return None
            user = member["user"]
            name = member.get("nick") or user.get("global_name") or user["username"]
            return user_id, (str(name), [int(r) for r in member.get("roles", [])])

        found = await asyncio.gather(*(one(u) for u in user_ids))
        return dict(item for item in found if item is not None)

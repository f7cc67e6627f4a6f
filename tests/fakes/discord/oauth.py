"""Discord's OAuth2 as a web login uses it: the consent page (outside the API, at discord.com/oauth2/authorize),
the token exchange, and `/users/@me` and `/users/@me/guilds` asked with a member's own token."""

from __future__ import annotations

import base64
import secrets
from typing import Any, ClassVar

import yarl
from aiohttp import web

from tests.fakes.discord.wire import Recorded, Refused
from tests.fakes.discord.world import World

Route = tuple[str, str, Any]


class OAuth(World):
    """The consent page logs in `login_as` (a member's name) at once, as a member who already consented; with
    `consent_refused` it sends the browser back with `error=access_denied`, as Cancel does."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.client_secret = "fake-client-secret"
        self.login_as = "mod"
        self.consent_refused = False
        self._codes: dict[str, tuple[str, str]] = {}  # code -> (member, redirect URI), each code used once
        self._bearers: dict[str, str] = {}  # access token -> member
        self.app.router.add_get("/oauth2/authorize", self._authorize)

    async def _authorize(self, request: web.Request) -> web.Response:
        query = request.query
        scopes = set(query.get("scope", "").split())
        if (
            query.get("client_id") != self.application_id
            or query.get("response_type") != "code"
            or not {"identify", "guilds"} <= scopes
            or not query.get("redirect_uri")
        ):
            return web.Response(status=400, text="Invalid OAuth2 request")
        back = yarl.URL(query["redirect_uri"])
        if self.consent_refused:
            raise web.HTTPFound(str(back.update_query(error="access_denied", state=query.get("state", ""))))
        code = secrets.token_hex(10)
        self._codes[code] = (self.login_as, query["redirect_uri"])
        raise web.HTTPFound(str(back.update_query(code=code, state=query.get("state", ""))))

    async def _token(self, call: Recorded) -> Any:
        """POST /oauth2/token: the client's credentials (HTTP Basic, or in the form) and a code not used yet, sent
        with the redirect URI it was issued for."""
        form = call.json or {}
        basic = "Basic " + base64.b64encode(f"{self.application_id}:{self.client_secret}".encode()).decode()
        in_form = form.get("client_id") == self.application_id and form.get("client_secret") == self.client_secret
        if call.authorization != basic and not in_form:
            raise Refused(401, 0, "invalid_client")
        grant = self._codes.pop(str(form.get("code")), None)
        if form.get("grant_type") != "authorization_code" or grant is None or grant[1] != form.get("redirect_uri"):
            raise Refused(400, 0, "invalid_grant")
        token = secrets.token_hex(16)
        self._bearers[token] = grant[0]
        return {"access_token": token, "token_type": "Bearer", "expires_in": 604800,
                "refresh_token": secrets.token_hex(16), "scope": "identify guilds"}  # fmt: skip

    def bearer_member(self, call: Recorded) -> str | None:
        """The member whose token the request carries (None: the bot's own token)."""
        scheme, _, token = call.authorization.partition(" ")
        if scheme != "Bearer":
            return None
        if token not in self._bearers:
            raise Refused(401, 0, "401: Unauthorized")
        return self._bearers[token]

    def member_me(self, name: str) -> dict[str, Any]:
        return self.users[name] | {"locale": self.locales.get(name, "en-US"), "mfa_enabled": False, "flags": 0}

    def member_guilds(self, name: str) -> list[dict[str, Any]]:
        """Every server (the fake's members are in all of them), with the member's permissions as the login's
        guild list shows them: computed once, at login, by Discord."""
        return [
            {"id": guild_id, "name": guild_name, "icon": None, "owner": name == "mod",
             "permissions": str(self.permissions_of(name)), "features": []}
            for guild_id, guild_name in self.guild_names.items()
        ]  # fmt: skip

    ROUTES: ClassVar[list[Route]] = [(r"/oauth2/token", "POST", _token)]

"""The moderators' dashboard: log in with Discord, pick a server, see its usage and change its quotas and reviews.

Pages are rendered on the server (Jinja2, autoescaped) and work without JavaScript. A session is a random cookie
(HttpOnly, SameSite=Lax, Secure behind https) whose sha256 is the row in `web_sessions`; every form carries a CSRF
token, the HMAC of the cookie under WEB_SESSION_SECRET, so a form posted from elsewhere or with another session's
token changes nothing. The right to manage a server is asked of Discord with the bot's token on every request
(`DiscordApi.server`), never taken from the login's guild list alone. Every change goes through the same services
as the slash commands, from the source 'web', so its audit row says where it came from.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from bot.core import quota
from bot.core.credits import CreditService
from bot.core.i18n import english, tr, translated
from bot.core.jobs import JobService
from bot.core.model import STATES, DuplicateRequest, WebSession
from bot.core.review import Review, ReviewRefused
from bot.serving.chart import ChartUnavailable, render_usage_chart
from bot.storage.interface import Storage
from bot.web.discord_api import DiscordApi, DiscordRefused, ServerView
from bot.web.hosting import DashboardHooks

log = logging.getLogger(__name__)

COOKIE = "dashboard_session"
LOGIN_SECONDS = 10 * 60  # from the login link to Discord's answer
SESSION_SECONDS = 12 * 3600
AUDIT_PAGE = 20
JOBS_SHOWN = 25
MEMBERS_SHOWN = 25  # each one is a request to Discord for the member's roles
OTHERS_NAMED = 15  # members named by the audit log and the jobs beyond those: as many requests more, at most
MAX_CREDITS = 1e6
# A forged form is told in English: its sender's session, and so its language, is not known.
FORGED = english("This form is not from your session; nothing was changed.")
LIMIT_SOURCES = {  # English message ids: where a member's limit comes from
    "blocked": english("blocked"),
    "override": english("their own limit"),
    "role": english("a role's limit"),
    "default": english("the server's default"),
}
NOTICES = {  # English message ids of what the page says after a change, by the form's action
    "approve": english("Approved: the video is being posted in its thread."),
    "reject": english("Rejected: the member is told your reason."),
    "saved": english("Saved."),
}


class BadForm(Exception):
    """A form's field is missing or out of range; the message (English, translated on the page) says which."""


def digest(cookie: str) -> str:
    """The session's key in the database: a copy of the table gives no one a live cookie."""
    return hashlib.sha256(cookie.encode()).hexdigest()


def parse_credits(value: str, *, empty: float | None = None, low: float = 0.0) -> int | None:
    """Credits typed in a form, as milli-credits; `empty` stands for a blank field (None: blank means None)."""
    text = value.strip()
    if not text:
        return None if empty is None else round(empty * 1000)
    try:
        amount = float(text)
    except ValueError:
        raise BadForm(english("Give a number of credits.")) from None
    if not low <= amount <= MAX_CREDITS:
        raise BadForm(english("That number of credits is out of range."))
    return round(amount * 1000)


def parse_id(value: str) -> int:
    """A member's (or role's, or job's server's) Discord id from a form."""
    text = value.strip()
    if not text.isdigit() or len(text) > 20:
        raise BadForm(english("Give the member's Discord id (a number)."))
    return int(text)


def parse_count(value: str, low: int, high: int) -> int:
    try:
        count = int(value.strip())
    except ValueError:
        raise BadForm(english("Give a whole number.")) from None
    if not low <= count <= high:
        raise BadForm(english("That number is out of range."))
    return count


def reason_of(form: Mapping[str, str]) -> str:
    reason = form.get("reason", "").strip()
    if not 1 <= len(reason) <= 200:
        raise BadForm(english("Give a reason (at most 200 characters)."))
    return reason


class Dashboard:
    """The dashboard's routes over the bot's services; `app()` is the aiohttp application to serve."""

    def __init__(
        self,
        *,
        store: Storage,
        credits: CreditService,
        jobs: JobService,
        review: Review,
        api: DiscordApi,
        public_url: str,
        session_secret: str,
        hooks: DashboardHooks,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.credits = credits.acting_from("web")
        self.jobs = jobs
        self.review = review
        self.api = api
        self.public_url = public_url.rstrip("/")
        self.secret = session_secret.encode()
        self.hooks = hooks
        self.clock = clock
        self.secure = self.public_url.startswith("https://")
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("bot.web"), autoescape=True, undefined=jinja2.StrictUndefined
        )
        self.templates.filters["utc"] = lambda moment: datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M")

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/callback"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self.index)
        app.router.add_get("/login", self.login)
        app.router.add_get("/callback", self.callback)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/servers/{guild}", self.server_page)
        app.router.add_get("/servers/{guild}/chart.svg", self.chart)
        app.router.add_post("/servers/{guild}/{action}", self.change)
        return app

    @web.middleware
    async def _headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        # No page of ours may be framed (clickjacking a Grant button), and nothing is cached between members.
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    # --- sessions -----------------------------------------------------------------------------------------------

    def csrf(self, cookie: str) -> str:
        """The CSRF token of a session: only this server can make it, and only for this cookie."""
        return hmac.new(self.secret, b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()

    async def _session(self, request: web.Request) -> tuple[str, WebSession] | None:
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        session = await self.store.web_session(digest(cookie))
        return (cookie, session) if session is not None else None

    async def _logged_in(self, request: web.Request) -> tuple[str, WebSession] | None:
        found = await self._session(request)
        return found if found is not None and found[1].user_id is not None else None

    def _set_cookie(self, response: web.StreamResponse, cookie: str, seconds: int) -> None:
        response.set_cookie(
            COOKIE, cookie, max_age=seconds, httponly=True, samesite="Lax", secure=self.secure, path="/"
        )

    async def _new_session(self, **fields: Any) -> tuple[str, WebSession]:
        cookie = secrets.token_urlsafe(32)
        now = self.clock()
        seconds = SESSION_SECONDS if fields.get("user_id") else LOGIN_SECONDS
        session = WebSession(
            digest(cookie),
            fields.get("state"),
            fields.get("user_id"),
            fields.get("user_name"),
            fields.get("locale"),
            now,
            now + seconds,
            fields.get("guilds"),
        )
        await self.store.put_web_session(session)
        return cookie, session

    # --- rendering ----------------------------------------------------------------------------------------------

    def render(self, template: str, locale: str | None, *, status: int = 200, **context: Any) -> web.Response:
        page = self.templates.get_template(template).render(
            _=functools.partial(tr, locale), lang="zh-CN" if locale == "zh-CN" else "en", **context
        )
        return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")

    def refuse(self, locale: str | None, status: int, message: str, cookie: str | None = None) -> web.Response:
        """An error page (`message` in the member's language); nothing was changed."""
        csrf = self.csrf(cookie) if cookie else None
        return self.render("error.html", locale, status=status, message=message, csrf=csrf)

    # --- login and logout ---------------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        found = await self._logged_in(request)
        if found is None:
            return self.render("login.html", None)
        cookie, session = found
        assert session.user_id is not None
        listed: dict[str, str] = json.loads(session.guilds or "{}")
        views = await asyncio.gather(*(self.api.server(int(g), session.user_id) for g in listed))
        servers = [view for view in views if view is not None and view.manages]
        return self.render("index.html", session.locale, session=session, servers=servers, csrf=self.csrf(cookie))

    async def login(self, request: web.Request) -> web.Response:
        """A new session waiting for Discord's answer, then Discord's consent page."""
        state = secrets.token_urlsafe(24)
        cookie, _ = await self._new_session(state=state)
        response = web.HTTPFound(self.api.authorize_url(state, self.redirect_uri))
        self._set_cookie(response, cookie, LOGIN_SECONDS)
        raise response

    async def callback(self, request: web.Request) -> web.Response:
        """Discord's answer: the state must be this browser's; the login replaces the waiting session."""
        found = await self._session(request)
        state, code = request.query.get("state", ""), request.query.get("code", "")
        if found is None or found[1].state is None or not hmac.compare_digest(found[1].state, state) or not code:
            log.info("dashboard: a login answer with no matching state was refused")
            return self.refuse(None, 403, tr(None, "This login link is not yours or has expired. Log in again."))
        try:
            user = await self.api.login(code, self.redirect_uri)
        except DiscordRefused as refused:
            log.warning("dashboard: Discord refused the login: %s", refused)
            return self.refuse(None, 403, tr(None, "Discord did not confirm the login. Log in again."))
        await self.store.delete_web_session(found[1].id)
        guilds = json.dumps({str(g): name for g, name in user.guilds.items()})
        cookie, _ = await self._new_session(user_id=user.id, user_name=user.name, locale=user.locale, guilds=guilds)
        log.info("dashboard: user %s logged in", user.id)
        response = web.HTTPFound("/")
        self._set_cookie(response, cookie, SESSION_SECONDS)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        found = await self._session(request)
        form = await request.post()
        if found is None or not hmac.compare_digest(str(form.get("csrf", "")), self.csrf(found[0])):
            return self.refuse(None, 403, FORGED)
        await self.store.delete_web_session(found[1].id)
        response = web.HTTPFound("/")
        response.del_cookie(COOKIE, path="/")
        raise response

    # --- a server -----------------------------------------------------------------------------------------------

    async def _managed(self, request: web.Request) -> tuple[str, WebSession, ServerView] | web.Response:
        """The session and the server, if this member may manage it now; else the page to answer instead."""
        found = await self._logged_in(request)
        if found is None:
            raise web.HTTPFound("/")
        cookie, session = found
        assert session.user_id is not None
        guild = request.match_info["guild"]
        view = await self.api.server(int(guild), session.user_id) if guild.isdigit() and len(guild) < 21 else None
        if view is None or not view.manages:
            log.info("dashboard: user %s may not manage server %s", session.user_id, guild)
            text = tr(session.locale, "You cannot manage this server: that needs Manage Server there.")
            return self.refuse(session.locale, 403, text, cookie)
        return cookie, session, view

    async def server_page(self, request: web.Request) -> web.Response:
        managed = await self._managed(request)
        if isinstance(managed, web.Response):
            return managed
        cookie, session, view = managed
        done = request.query.get("done", "")
        notice = tr(session.locale, NOTICES[done]) if done in NOTICES else None
        return await self._server_page(cookie, session, view, request.query, notice=notice)

    async def _server_page(
        self,
        cookie: str,
        session: WebSession,
        view: ServerView,
        query: Mapping[str, str],
        *,
        notice: str | None = None,
        error: str | None = None,
    ) -> web.Response:
        guild_id, locale = view.id, session.locale
        settings = await self.credits.settings(guild_id)
        usage, window = await self.credits.usage(guild_id, None)
        overrides = await self.credits.member_overrides(guild_id)
        shown = list(dict.fromkeys([row.user_id for row in usage] + list(overrides)))[:MEMBERS_SHOWN]
        page = max(0, int(query["audit"])) if query.get("audit", "").isdigit() else 0
        audit = await self.credits.audit_entries(guild_id, limit=AUDIT_PAGE + 1, offset=page * AUDIT_PAGE)
        member_filter = query.get("member", "").strip()
        state = query.get("state", "") if query.get("state", "") in STATES else ""
        jobs = await self.jobs.member_jobs(
            guild_id,
            int(member_filter) if member_filter.isdigit() else None,
            statuses=(state,) if state else None,
            limit=JOBS_SHOWN,
        )
        # The moderators and members the audit log and the jobs name, shown by name too (a few more look-ups).
        people = [e.moderator_id for e in audit] + [e.target_id for e in audit] + [job.user_id for job in jobs]
        others = [user for user in people if user is not None]
        named = list(dict.fromkeys(shown + others))[: MEMBERS_SHOWN + OTHERS_NAMED]
        members = await self.api.member_roles(guild_id, named)
        statuses = await asyncio.gather(
            *(self.credits.status(guild_id, user, members.get(user, ("", []))[1]) for user in shown)
        )
        return self.render(
            "server.html",
            locale,
            status=400 if error else 200,
            session=session,
            csrf=self.csrf(cookie),
            once=secrets.token_urlsafe(16),  # the grant form's key: sent twice (a double click), it grants once
            server=view,
            settings=settings,
            window=window,
            usage=usage,
            names={user: name for user, (name, _) in members.items()},
            quotas=list(zip(shown, statuses, strict=True)),
            roles=await self.credits.role_limits(guild_id),
            pending=await self.review.pending(guild_id),
            audit=audit[:AUDIT_PAGE],
            audit_page=page,
            audit_more=len(audit) > AUDIT_PAGE,
            jobs=jobs,
            states=STATES,
            member_filter=member_filter,
            state_filter=state,
            periods=quota.PERIODS,
            sources=LIMIT_SOURCES,
            credits=quota.format_credits,
            translated=functools.partial(translated, locale),
            notice=notice,
            error=error,
        )

    async def chart(self, request: web.Request) -> web.Response:
        managed = await self._managed(request)
        if isinstance(managed, web.Response):
            return managed
        _, session, view = managed
        days = await self.credits.daily_credits(view.id)
        try:
            svg = await asyncio.to_thread(render_usage_chart, days, fmt="svg", locale=session.locale or "en-US")
        except ChartUnavailable:
            raise web.HTTPNotFound(text="the chart needs matplotlib (the web extra)") from None
        return web.Response(body=svg, content_type="image/svg+xml")

    # --- changes ------------------------------------------------------------------------------------------------

    async def change(self, request: web.Request) -> web.Response:
        """A form's POST: its CSRF token first, the member's right to manage the server again, then the change."""
        form = {key: str(value) for key, value in (await request.post()).items()}
        found = await self._logged_in(request)
        if found is None or not hmac.compare_digest(form.get("csrf", ""), self.csrf(found[0])):
            log.warning("dashboard: a form without its session's CSRF token was refused (%s)", request.path)
            return self.refuse(None, 403, FORGED)
        managed = await self._managed(request)
        if isinstance(managed, web.Response):
            return managed
        cookie, session, view = managed
        assert session.user_id is not None
        action = request.match_info["action"]
        try:
            notice = await self._apply(action, view.id, session.user_id, form)
        except BadForm as bad:
            return await self._server_page(cookie, session, view, {}, error=translated(session.locale, str(bad)))
        except ReviewRefused:
            return await self._server_page(
                cookie, session, view, {}, error=tr(session.locale, "This video was already decided.")
            )
        raise web.HTTPSeeOther(f"/servers/{view.id}?done={notice}")

    async def _apply(self, action: str, guild_id: int, moderator: int, form: Mapping[str, str]) -> str:
        """Make one change through the services; returns its name for the page's notice."""
        credits = self.credits
        if action in ("approve", "reject"):
            job_id = form.get("job", "")
            if action == "approve":
                job = await self.review.approve(guild_id, moderator, job_id, source="web")
            else:
                job = await self.review.reject(guild_id, moderator, job_id, reason_of(form), source="web")
            await self.hooks.decided(job, moderator)
            log.info("dashboard: job %s %sd by %s", job_id, action, moderator)
            return action
        if action == "member-limit":
            limit = parse_credits(form.get("limit", ""))
            member = parse_id(form.get("member", ""))
            if limit is None:
                entry = await credits.clear_member(guild_id, moderator, member)
            else:
                entry = await credits.set_member_limit(guild_id, moderator, member, limit)
        elif action == "grant":
            amount = parse_credits(form.get("amount", ""), low=0.001)
            if amount is None:
                raise BadForm(english("Give a number of credits."))
            once = form.get("once", "")
            if not once or len(once) > 64:
                raise BadForm(english("This form is out of date: reload the page and send it again."))
            member = parse_id(form.get("member", ""))
            try:
                entry = await credits.grant(guild_id, moderator, member, amount, reason_of(form), f"web:{once}")
            except DuplicateRequest:
                log.info("dashboard: a grant form sent again by %s granted nothing more", moderator)
                return "saved"  # the first sending granted it: the page says so, as after it
        elif action == "block":
            entry = await credits.block(guild_id, moderator, parse_id(form.get("member", "")), reason_of(form))
        elif action == "unblock":
            entry = await credits.unblock(guild_id, moderator, parse_id(form.get("member", "")))
        elif action == "role-limit":
            role = parse_id(form.get("role", ""))
            if form.get("remove"):
                entry = await credits.set_role(guild_id, moderator, role, None, remove=True)
            else:
                entry = await credits.set_role(guild_id, moderator, role, parse_credits(form.get("limit", "")))
        elif action == "default":
            period = form.get("period", "")
            if period not in quota.PERIODS:
                raise BadForm(english("Choose a period."))
            limit = parse_credits(form.get("limit", ""))
            if limit is None:
                raise BadForm(english("Give a number of credits."))
            entry = await credits.set_default(guild_id, moderator, limit, period)
        elif action == "caps":
            member_cap = parse_count(form.get("member_in_flight", ""), 1, 100)
            server_cap = parse_count(form.get("server_in_flight", ""), 1, 1000)
            entry = await credits.set_caps(guild_id, moderator, member_cap, server_cap)
        elif action == "confirm-above":
            entry = await credits.set_confirm_above(guild_id, moderator, parse_credits(form.get("above", "")))
        else:
            raise web.HTTPNotFound()
        log.info("dashboard: %s by %s in server %s", entry.action, moderator, guild_id)
        await self.hooks.changed(entry)
        return "saved"

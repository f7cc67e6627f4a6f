"""Settings from the environment and `.env`, built once in `main()` (never at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.core.model import QuotaSettings
from bot.core.options import DEFAULT_MODEL
from bot.core.quota import SOUND, Period

Resolution = Literal["720p", "1080p"]


# Discord allows a bot about 50 requests a second in all (interaction answers aside); staying a little under it
# avoids the global 429s a burst of deliveries would otherwise meet (discord.py only reacts to them).
GLOBAL_REQUESTS_PER_SECOND = 45


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it in one line."""


class Settings(BaseSettings):
    """Every setting of the bot; see `.env.example` for what each one means."""

    # An empty line in `.env` (as `.env.example` ships them) means "not set": the default applies.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    discord_token: SecretStr = SecretStr("")
    kling_api_key: SecretStr
    kling_endpoint_path: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._~-]+$")
    kling_base_url: str = Field(default="https://genaiapi-m2.cloudsway.net/v1/ai", pattern=r"^https?://")
    # The model: the last part of each submit path (the account's KLING_ENDPOINT_PATH comes before /kling/...).
    # kling-3.0 also takes an end frame (`/video image end_image`); other names are sent as they are.
    kling_model: str = Field(default=DEFAULT_MODEL, min_length=1, pattern=r"^[A-Za-z0-9._~-]+$")
    database_path: Path = Path("data/bot.sqlite3")
    # A postgresql:// URL for several bot processes on one database; unset: the SQLite file at DATABASE_PATH.
    database_url: str | None = Field(default=None, pattern=r"^(postgres(ql)?|sqlite)://")
    poll_interval_seconds: float = Field(default=10.0, gt=0, le=300)
    # Queries of one poll in flight at once (20 tasks each); a rate limit from the provider holds them all.
    poll_concurrency: int = Field(default=4, ge=1, le=32)

    # How long a job may wait to be sent, or render, before it is failed (waiting) or shown as late (rendering).
    job_timeout_minutes: float = Field(default=30.0, gt=0)
    # A submit whose answer was lost is looked up by its id this long (and at least twice) before it is resent.
    submit_lookup_seconds: float = Field(default=150.0, gt=0)
    api_timeout_seconds: float = Field(default=30.0, gt=0)
    api_max_retries: int = Field(default=4, ge=0, le=10)
    # Several processes share the background work by claims that last this long unless renewed: the jobs of a
    # process that died go to another one after at most this long.
    lease_seconds: float = Field(default=60.0, ge=1, le=3600)
    # Jobs the bot keeps at the provider at once; more wait in the bot's queue (the account has a limit too).
    provider_concurrency: int = Field(default=5, ge=1, le=1000)

    default_duration: int = Field(default=5, ge=3, le=15)
    default_resolution: Resolution = "720p"

    discord_api_base_url: str = Field(default="https://discord.com/api/v10", pattern=r"^https?://")
    discord_gateway_url: str = Field(default="wss://gateway.discord.gg/", pattern=r"^wss?://")
    discord_guild_id: int | None = None

    # Credits follow the provider's billing units: a job reserves duration x this rate until billing is known.
    credits_per_second_720p: float = Field(default=0.8, ge=0, le=100)
    credits_per_second_1080p: float = Field(default=1.0, ge=0, le=100)
    # The same with sound (asked for, or not chosen: turbo's default is sound). Unset: as without (Kling's turbo
    # price includes sound; other models and resellers charge about 1.5x for it).
    credits_per_second_720p_sound: float | None = Field(default=None, ge=0, le=100)
    credits_per_second_1080p_sound: float | None = Field(default=None, ge=0, le=100)

    # Quotas: what a server starts with until its moderators change it with /quota-admin.
    default_quota_credits: float = Field(default=50.0, ge=0)
    default_quota_period: Period = "week"
    # The personal quota: one per member across the bot's direct messages, set by the bot's owner (credits per
    # PERSONAL_QUOTA_PERIOD). 0, the default, turns the commands off in direct messages.
    personal_quota_credits: float = Field(default=0.0, ge=0)
    personal_quota_period: Period = "week"
    member_jobs_in_flight: int = Field(default=2, ge=1, le=100)
    server_jobs_in_flight: int = Field(default=10, ge=1, le=1000)
    # A job above a server's confirm-above threshold waits this long for the member's Confirm (an interaction's
    # token lasts 15 minutes, so at most 14).
    confirm_timeout_seconds: float = Field(default=300.0, gt=0, le=840)

    # Members' images downloaded from Discord at once (each streamed to a temporary file); more wait their turn.
    image_downloads: int = Field(default=4, ge=1, le=100)

    # Join (a chain's segments posted as one video) is free to members, so it is bounded: one at a time per chain;
    # a member may start one every JOIN_COOLDOWN_SECONDS in a server; a re-encode of more than JOIN_MAX_FRAMES
    # frames is refused before it starts (24 fps: 2400 is 100 s of video). Joins run in JOIN_PROCESSES processes
    # of their own (more wait their turn), each re-encode with JOIN_ENCODE_THREADS encoder threads.
    join_cooldown_seconds: float = Field(default=120.0, ge=0, le=86400)
    join_max_frames: int = Field(default=2400, ge=1)
    join_processes: int = Field(default=1, ge=1, le=32)
    join_encode_threads: int = Field(default=2, ge=1, le=64)

    # Callbacks: with a public URL, the provider calls the bot when a task changes, and the bot asks at once.
    callback_public_url: str | None = Field(default=None, pattern=r"^https?://")
    callback_secret: SecretStr | None = None
    callback_host: str = "0.0.0.0"
    callback_port: int = Field(default=8090, ge=0, le=65535)
    # Callbacks each client address (the connection's peer: behind a proxy, the proxy's) may send per second, with
    # bursts of up to CALLBACK_RATE_BURST; more are answered 429. 0: no limit (let the proxy limit per client).
    callback_rate_per_second: float = Field(default=50.0, ge=0)
    callback_rate_burst: int = Field(default=200, ge=1)

    # Prometheus metrics on http://METRICS_HOST:METRICS_PORT/metrics when the port is set. Local only by default:
    # the page shows server ids and credit totals.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    # The moderators' dashboard (the `web` extra) on http://WEB_HOST:WEB_PORT when the port is set; members reach it
    # at WEB_PUBLIC_URL (a proxy in front, for https), whose /callback is the OAuth2 redirect URI registered in
    # Discord's developer portal. DISCORD_CLIENT_ID: unset, the application's own id.
    web_port: int | None = Field(default=None, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    web_public_url: str | None = Field(default=None, pattern=r"^https?://")
    discord_client_id: int | None = None
    discord_client_secret: SecretStr | None = None
    web_session_secret: SecretStr | None = Field(default=None, min_length=16)

    # Discord sharding: this process runs the shards SHARD_IDS ("0-3", "0,2") of SHARD_COUNT. Unset: one process
    # runs every shard, as many as Discord recommends (GET /gateway/bot); SHARD_COUNT alone: all of that many.
    shard_ids: str | None = None
    shard_count: int | None = None
    # Discord requests a second this process allows itself (interaction answers aside). Discord's global limit (50)
    # is per bot, shared by all its processes: unset, a process takes its shards' share of 45 (all of it alone).
    discord_requests_per_second: float | None = Field(default=None, gt=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @property
    def credit_rates(self) -> dict[str, int]:
        """Milli-credits per second of video, by resolution, and with sound (`720p+sound`)."""
        silent = {"720p": self.credits_per_second_720p, "1080p": self.credits_per_second_1080p}
        sound = {"720p": self.credits_per_second_720p_sound, "1080p": self.credits_per_second_1080p_sound}
        rates = {name: round(rate * 1000) for name, rate in silent.items()}
        for name, rate in sound.items():
            rates[name + SOUND] = round((silent[name] if rate is None else rate) * 1000)
        return rates

    @property
    def quota_defaults(self) -> QuotaSettings:
        """The quota rules of a server whose moderators changed nothing."""
        return QuotaSettings(
            default_limit=round(self.default_quota_credits * 1000),
            period=self.default_quota_period,
            member_in_flight=self.member_jobs_in_flight,
            server_in_flight=self.server_jobs_in_flight,
        )

    @property
    def personal_quota(self) -> QuotaSettings | None:
        """The rules of the personal quota (None: direct messages are off). The per-member cap is what bounds it:
        the "server" cap would span every member's direct messages, so it is the largest a server may have."""
        if not self.personal_quota_credits:
            return None
        return QuotaSettings(
            default_limit=round(self.personal_quota_credits * 1000),
            period=self.personal_quota_period,
            member_in_flight=self.member_jobs_in_flight,
            server_in_flight=1000,
        )

    @property
    def database(self) -> str:
        """What the store opens: DATABASE_URL when set, else the SQLite file at DATABASE_PATH."""
        return self.database_url or str(self.database_path)

    @property
    def database_label(self) -> str:
        """The database for messages and logs: a PostgreSQL URL without its password."""
        if not self.database_url:
            return str(self.database_path)
        parts = urlsplit(self.database_url)
        if parts.password is None:
            return self.database_url
        host = parts.hostname or ""
        where = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=where))

    @property
    def database_setting(self) -> str:
        """The setting that names the database, for messages."""
        return "DATABASE_URL" if self.database_url else "DATABASE_PATH"

    def discord_pace(self) -> float:
        """Requests a second this process may send to Discord: DISCORD_REQUESTS_PER_SECOND, or its shards' share."""
        if self.discord_requests_per_second is not None:
            return self.discord_requests_per_second
        shard_ids, shard_count = self.shard_plan()
        share = len(shard_ids) / shard_count if shard_ids is not None and shard_count else 1.0
        return GLOBAL_REQUESTS_PER_SECOND * share

    def shard_plan(self) -> tuple[list[int] | None, int | None]:
        """(shard ids, shard count) for discord.py; raises ConfigError with one line when they do not fit."""
        count = self.shard_count
        if count is not None and count < 1:
            raise ConfigError(f"SHARD_COUNT must be at least 1, not {count}")
        if self.shard_ids is None:
            return None, count
        if count is None:
            raise ConfigError("SHARD_IDS needs SHARD_COUNT (how many shards the bot has in all)")
        return parse_shard_ids(self.shard_ids, count), count

    def web_missing(self) -> list[str]:
        """The settings the dashboard needs that are not set (empty: it can start, or WEB_PORT is unset)."""
        needed = {
            "WEB_PUBLIC_URL": self.web_public_url,
            "DISCORD_CLIENT_SECRET": self.discord_client_secret,
            "WEB_SESSION_SECRET": self.web_session_secret,
        }
        return [name for name, value in needed.items() if not value] if self.web_port is not None else []

    @property
    def kling_api_root(self) -> str:
        """The base URL joined with the account's endpoint path."""
        return f"{self.kling_base_url.rstrip('/')}/{self.kling_endpoint_path}"


def parse_shard_ids(text: str, count: int) -> list[int]:
    """ "0-3" or "0,2" (or "0-1,5") into sorted shard ids, each below `count`; ConfigError otherwise."""
    ids: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise ConfigError(f"SHARD_IDS: {text!r} is not a list of shard ids such as 0-3 or 0,2")
        ids.update(range(int(low), int(high if dash else low) + 1))
    if max(ids) >= count:
        raise ConfigError(f"SHARD_IDS: shard {max(ids)} does not exist with SHARD_COUNT={count} (ids 0-{count - 1})")
    return sorted(ids)


def load_settings(env_file: str | None = ".env", **overrides: object) -> Settings:
    """Build the settings, turning pydantic's report into one line per bad setting."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None

"""What the bot processes sharing one database tell each other, and which of them does the once-per-fleet duties.

One process (SQLite) is its own fleet: it holds every duty and its callbacks' hints stay in it. On PostgreSQL:
- a duty (posting account-trouble alerts, the sweep for timed-out jobs) is held by whichever process took its
  session-level advisory lock first; the lock dies with that process's connection, so the duty moves to another
  process at its next try;
- a callback can reach any process: the one that got it sends `NOTIFY kling_fleet`, and every other process, which
  `LISTEN`s on its own connection, hands the task id to its poll loop (the job may be one it polls);
- an alert (the provider refused the account) raised in a process that does not hold the alerts duty is told to
  the fleet the same way, and posted by the process that holds it;
- a review decided in a dashboard served alone (`python -m bot web`) is told the same way: every process wakes its
  deliveries (one claims the post), and the one holding the alerts duty shows the decision in Discord.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from bot.storage.interface import is_postgres

log = logging.getLogger(__name__)

# What the other processes tell: (kind, text); kinds are "hint" (a task id), "alert" (an operator alert) and
# "decided" (a review decided in the dashboard: "<job id> <moderator id>").
MessageHandler = Callable[[str, str], Awaitable[None]]


def process_name() -> str:
    """This process among the fleet, for leases and logs: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Fleet(Protocol):
    """The processes sharing the database, as seen from one of them."""

    async def holds(self, duty: str) -> bool:
        """Whether this process does `duty` now (it takes the duty when nobody holds it)."""
        ...

    async def tell(self, kind: str, text: str) -> None:
        """Tell the other processes something (`kind` "hint": a callback named task `text`; "alert": an alert)."""
        ...

    async def listen(self, on_message: MessageHandler) -> None:
        """Hand what the other processes tell to `on_message(kind, text)` until `close`."""
        ...

    async def close(self) -> None: ...


class SoloFleet:
    """One process: it holds every duty, and has nobody to tell."""

    async def holds(self, duty: str) -> bool:
        return True

    async def tell(self, kind: str, text: str) -> None:
        return None

    async def listen(self, on_message: MessageHandler) -> None:
        return None

    async def close(self) -> None:
        return None


def open_fleet(database: str, name: str | None = None) -> Fleet:
    """The fleet for `database`: PostgreSQL's when it is a PostgreSQL URL, else this process alone.

    Nothing connects until a duty or a message needs it, so tools that never ask pay nothing."""
    if is_postgres(database):
        from bot.storage.postgres_fleet import PgFleet  # psycopg is only needed by those who use PostgreSQL

        return PgFleet(database, name)
    return SoloFleet()

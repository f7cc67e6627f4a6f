"""The PostgreSQL fleet: advisory locks for the once-per-fleet duties, LISTEN/NOTIFY for what processes tell."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg

from bot.storage.fleet import MessageHandler, process_name

log = logging.getLogger(__name__)

CHANNEL = "kling_fleet"
RECHECK_SECONDS = 2.0  # how long an answer of `holds` stands before the database is asked again
RECONNECT_SECONDS = 2.0  # after the listening connection drops


class PgFleet:
    """Advisory locks for duties and LISTEN/NOTIFY for messages, each on a connection of its own.

    The lock connection is not pooled: a session-level advisory lock belongs to one connection, and is released
    when it closes (or the process dies). The listening connection is separate because psycopg's `notifies()`
    holds its connection while it waits."""

    def __init__(self, dsn: str, name: str | None = None) -> None:
        self.dsn = dsn
        self.name = name or process_name()
        self._locks: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._held: set[str] = set()
        self._answers: dict[str, tuple[float, bool]] = {}  # duty: (when asked, whether held), for RECHECK_SECONDS
        self._guard = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while LISTEN is in effect (tests wait on it)

    async def _lock_connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._locks is None or self._locks.closed or self._locks.broken:
            self._held.clear()  # locks of a lost connection are gone with it
            self._locks = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=10)
        return self._locks

    async def holds(self, duty: str) -> bool:
        asked_at, held = self._answers.get(duty, (float("-inf"), False))
        if time.monotonic() - asked_at < RECHECK_SECONDS:
            return held  # every poll tick asks: the database is asked at most every RECHECK_SECONDS
        held = await self._ask(duty)
        self._answers[duty] = (time.monotonic(), held)
        return held

    async def _ask(self, duty: str) -> bool:
        async with self._guard:
            try:
                db = await self._lock_connection()
                if duty in self._held:
                    await db.execute("SELECT 1")  # still connected, so still holding it
                    return True
                cursor = await db.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"kling-bot:duty:{duty}",)
                )
                row = await cursor.fetchone()
            except psycopg.Error as exc:
                log.warning("cannot reach the database to hold the %r duty: %s", duty, exc)
                self._held.clear()
                if self._locks is not None:
                    await self._locks.close()
                return False
            if row and row[0]:
                log.info("this process (%s) now does the %r duty for the fleet", self.name, duty)
                self._held.add(duty)
            return duty in self._held

    async def tell(self, kind: str, text: str) -> None:
        async with self._guard:
            try:
                db = await self._lock_connection()
                await db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.name} {kind} {text}"))
            except psycopg.Error as exc:
                log.warning("could not tell the other processes (%s %s): %s", kind, text, exc)

    async def listen(self, on_message: MessageHandler) -> None:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(on_message), name="fleet-listen")

    async def _listen(self, on_message: MessageHandler) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as db:
                    await db.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    async for notice in db.notifies():
                        sender, _, rest = notice.payload.partition(" ")
                        kind, _, text = rest.partition(" ")
                        if sender != self.name and text:
                            await on_message(kind, text)
            except psycopg.Error as exc:
                log.warning("lost the fleet's channel (%s); listening again in %.0fs", exc, RECONNECT_SECONDS)
            except Exception:
                log.exception("handling another process's message failed; listening again")
            self.listening.clear()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._locks is not None:
            await self._locks.close()  # releases every duty at once
            self._locks = None
            self._held.clear()
            self._answers.clear()

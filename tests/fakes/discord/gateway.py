"""The fake Discord's gateway: the websocket a bot IDENTIFYs or RESUMEs on, sharding as Discord does it, and the
events dispatched to the sessions of a guild's shard (kept for replay on RESUME)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from aiohttp import WSMsgType, web

from tests.fakes.discord.wire import Recorded
from tests.fakes.discord.world import World


class Gateway(World):
    """Sharding, as Discord does it: GET /gateway/bot recommends `shards`; a connection that IDENTIFYs with
    `shard: [id, count]` is sent only the guilds of its shard, (guild_id >> 22) % count == id, and their events;
    one without `shard` (or with [0, 1]) gets every guild."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.identified_shards: list[tuple[int, int]] = []  # (id, count) of each IDENTIFY, in order
        self.identified = asyncio.Event()  # a bot IDENTIFYed and was sent READY and GUILD_CREATE
        self.resumes = 0
        self._sockets: list[web.WebSocketResponse] = []  # identified or resumed sessions
        self._shard: dict[web.WebSocketResponse, tuple[int, int]] = {}  # each session's [id, count]
        self._session_shards: dict[str, tuple[int, int]] = {}  # session id -> shard, for RESUME
        self._connections: set[web.WebSocketResponse] = set()
        self._history: list[dict[str, Any]] = []  # dispatched events, replayed on RESUME
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self.app.router.add_get("/gateway", self._gateway)

    @property
    def connected(self) -> bool:
        """True while a bot holds an open gateway connection."""
        return any(not socket.closed for socket in self._sockets)

    async def drop_gateway(self) -> None:
        """Close the bot's websocket with a resumable code (4000), as Discord does now and then."""
        sockets, self._sockets[:] = list(self._sockets), []  # events from now on wait for the RESUME
        for socket in sockets:
            await socket.close(code=4000)

    def disconnect_gateway(self) -> None:
        """`drop_gateway` from synchronous code: the bot reconnects and RESUMEs (missed events are replayed)."""
        task = asyncio.get_running_loop().create_task(self.drop_gateway())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._connections.add(socket)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}}))
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                if payload["op"] == 1:
                    await socket.send_str(json.dumps({"op": 11}))
                elif payload["op"] in (2, 6) and payload["d"]["token"] != self.token:
                    await socket.close(code=4004)  # Authentication failed
                elif payload["op"] == 2:
                    shard = tuple(payload["d"].get("shard") or (0, 1))
                    assert len(shard) == 2 and 0 <= shard[0] < shard[1], f"bad shard {shard}"
                    session = f"fake-session-{len(self.identified_shards)}"
                    self.identified_shards.append(shard)
                    self._session_shards[session] = self._shard[socket] = shard
                    guilds = [g for g in self.guild_names if self._covers(shard, g) and g not in self.without_bot]
                    ready = self._ready_payload(session, guilds)
                    if "shard" in payload["d"]:
                        ready["shard"] = list(shard)  # Discord echoes the shard of a sharded session
                    await self._send(socket, "READY", ready)
                    for guild_id in guilds:
                        await self._send(socket, "GUILD_CREATE", self.guild_payload(guild_id))
                    self._sockets.append(socket)
                    self.identified.set()
                elif payload["op"] == 6:
                    self._shard[socket] = shard = self._session_shards.get(payload["d"]["session_id"], (0, 1))
                    self._sockets.append(socket)
                    for missed in [e for e in self._history if e["s"] > (payload["d"]["seq"] or 0)]:
                        if self._covers(shard, self._event_guild(missed["t"], missed["d"])):
                            await socket.send_str(json.dumps(missed))
                    await self._send(socket, "RESUMED", {})
                    self.resumes += 1
        finally:
            self._connections.discard(socket)
            self._shard.pop(socket, None)
            if socket in self._sockets:
                self._sockets.remove(socket)
        return socket

    def _ready_payload(self, session: str, guilds: list[str]) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": guild_id, "unavailable": True} for guild_id in guilds],
            "session_id": session,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
        }

    def _frame(self, event: str, data: Any) -> dict[str, Any]:
        self._seq += 1
        return {"op": 0, "t": event, "s": self._seq, "d": data}

    async def _send(self, socket: web.WebSocketResponse, event: str, data: Any) -> None:
        await socket.send_str(json.dumps(self._frame(event, data)))

    @staticmethod
    def _covers(shard: tuple[int, int], guild_id: str | None) -> bool:
        """Whether a session of this shard gets the guild's events (events of no guild go to shard 0)."""
        if guild_id is None:
            return shard[0] == 0
        return (int(guild_id) >> 22) % shard[1] == shard[0]

    @staticmethod
    def _event_guild(event: str, data: Any) -> str | None:
        if not isinstance(data, dict):
            return None
        return data.get("guild_id") or (data.get("id") if event.startswith("GUILD_") else None)

    @property
    def connected_shards(self) -> list[tuple[int, int]]:
        """The (id, count) of every open session, one entry per session."""
        return [shard for socket, shard in self._shard.items() if socket in self._sockets and not socket.closed]

    async def dispatch(self, event: str, data: Any) -> list[tuple[int, int]]:
        """Send a gateway event to the sessions of its guild's shard (kept for replay if they are between
        connections); returns the shard of each session it went to."""
        frame = self._frame(event, data)
        self._history.append(frame)
        guild_id = self._event_guild(event, data)
        sent = []
        for socket in list(self._sockets):
            shard = self._shard.get(socket, (0, 1))
            if not socket.closed and self._covers(shard, guild_id):
                try:
                    await socket.send_str(json.dumps(frame))
                except ConnectionResetError:  # the bot went away (killed) between the check and the send
                    continue
                sent.append(shard)
        return sent

    async def wait_ready(self, timeout: float = 10, *, within: float | None = None) -> None:  # noqa: ASYNC109
        """Until a bot has IDENTIFYed and been sent READY and GUILD_CREATE."""
        await asyncio.wait_for(self.identified.wait(), within or timeout)

    async def set_bot_permissions(self, channel_id: str, value: int) -> None:
        """Change the bot's permissions in a channel as a moderator would: Discord sends CHANNEL_UPDATE."""
        self.bot_permissions[channel_id] = value
        channel = self._with_bot_overwrite(self.channels[channel_id])
        await self.dispatch("CHANNEL_UPDATE", channel | {"guild_id": self.guild_id})

    async def _get_gateway(self, call: Recorded, bot: str | None) -> Any:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return {"url": self.gateway_url} | ({"shards": self.shard_count, "session_start_limit": limit} if bot else {})

    ROUTES: ClassVar[list[tuple[str, str, Any]]] = [(r"/gateway(/bot)?", "GET", _get_gateway)]

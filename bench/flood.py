"""A flood: N videos finish at once; the bot, in this process, delivers them through a rate-limited fake Discord.

Run: `.venv/bin/python -m bench.flood --videos 1000` (`--quick`: 50). The fake Discord (with Discord's rate limits)
and the Kling simulator run in a child process (`--serve`), driven over a small control API, so their work never
shares the bot's event loop. Prints one table. `--compare` runs the flood twice in one go, first with the videos'
posts in line with the card and status edits (the background lane, as they were), then as it is (a lane of their
own, before the edits), and prints both side by side; `--compare pace` compares the global pace as it was (a turn
counted from the moment the request is let through) instead, `--compare lanes` one lane for every request.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.app import Lane, Pace, VideoBot, apply_discord_endpoints
from bot.config import load_settings
from bot.core.model import AT_PROVIDER, Job
from bot.provider.simulator import KlingSimulator
from bot.resources import open_resources
from bot.serving.server import serve
from tests.fake_discord import FakeDiscord
from tests.fakes.discord.ratelimits import (
    DEFAULT_LIMIT,
    GLOBAL_EXEMPT,
    GLOBAL_LIMIT,
    ROUTE_LIMITS,
    Limit,
    rate_limit_route,
)

KEY = "sk-flood-secret-key-0123"
USERS = 12  # members making the flood: the bot lets one member have at most 100 jobs in flight
ACK_COMMANDS = 50
ACK_EVERY = 0.1  # seconds between the slash commands issued during the flood
MEMBERS_SPREAD = 10.0  # seconds over which the acting members start pressing, from the finish
POLL_SECONDS = 1.0
QUIET = 6.0  # the flood is over when Discord gets no request for this long (longer than a 5 s window)
UNLIMITED = Limit(10**9, 1.0)
LAG_EVERY = 0.01  # seconds between the looks at the bot's event loop lag


# --- the child process: the fake Discord and the simulator, with a control API ---------------------------------


class TimedList(list[Any]):
    """The simulator's request list, also noting when each request came (the simulator records no times)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.perf_counter())
        super().append(item)


async def serve_fakes(channels: int, members: int) -> None:
    """Start both fakes, print where they listen (one JSON line), serve the control API until stdin closes."""
    # Limits on from the start, so discord.py learns the buckets as against Discord, but unbounded for the intake:
    # 1,000 cards at Discord's 5 per 5 s per channel would take a quarter of an hour before the flood.
    fake = FakeDiscord(rate_limits=True)
    fake.global_limit, fake.route_limits, fake.default_limit = UNLIMITED, {}, UNLIMITED
    for name in [f"member{n}" for n in range(USERS + ACK_COMMANDS)] + [f"acting{n}" for n in range(members)]:
        fake.users[name], fake.member_roles[name] = fake._user(name), []
    rooms = [fake.general, *(fake.add_channel(f"room-{n}", 0) for n in range(1, channels))]
    sim = KlingSimulator(api_key=KEY, endpoint_path="flood", render_seconds=10**9)
    sim.hold = True
    sim.requests = TimedList()
    await fake.start()
    await sim.start()
    state: dict[str, Any] = {"t0": None}

    async def slash(request: web.Request) -> web.Response:
        body = await request.json()
        room = rooms[body["n"] % len(rooms)]
        sent = await fake.slash("video", {"prompt": body["prompt"]}, sub="text", user=body["user"], channel=room)
        return web.json_response({"id": sent.id})

    async def press(request: web.Request) -> web.Response:
        body = await request.json()
        sent = await fake.press(body["custom_id"], body["message_id"], user=body["user"])
        return web.json_response({"id": sent.id})

    async def status(request: web.Request) -> web.Response:
        sent = await fake.slash("video", {}, sub="status", user=(await request.json())["user"])
        return web.json_response({"id": sent.id})

    async def finish_now(request: web.Request) -> web.Response:
        sim.finish()  # the members' own videos, before the flood: no limits changed, no clock started
        return web.json_response({})

    async def finish(request: web.Request) -> web.Response:
        fake.global_limit, fake.route_limits, fake.default_limit = GLOBAL_LIMIT, dict(ROUTE_LIMITS), DEFAULT_LIMIT
        fake.reset_rate_limits()
        state["t0"] = time.perf_counter()
        sim.finish()
        return web.json_response({"t0": state["t0"]})

    async def stats(request: web.Request) -> web.Response:
        t0 = state["t0"] or 0.0
        ids = (await request.json())["ids"]
        answers = {i: fake.interactions[i] for i in ids if i in fake.interactions}
        assert isinstance(sim.requests, TimedList)
        queries = [t for r, t in zip(sim.requests, sim.requests.times, strict=True) if r.path.endswith("/tasks")]
        return web.json_response({
            "t0": t0,
            "requests": [(r.method, r.path, r.status, r.at) for r in fake.requests if r.at >= t0],
            "answers": {n: (i.sent_at, i.first_answer_at, i.told_at) for n, i in answers.items()},
            "queries": [t for t in queries if t >= t0],
            "limited": fake.rate_limited,
        })  # fmt: skip

    async def count(request: web.Request) -> web.Response:
        return web.json_response(len(fake.requests))

    control = web.Application()
    control.router.add_post("/slash", slash)
    control.router.add_post("/finish", finish)
    control.router.add_post("/finish-now", finish_now)
    control.router.add_post("/press", press)
    control.router.add_post("/status", status)
    control.router.add_post("/stats", stats)
    control.router.add_get("/count", count)
    await serve_control(fake, sim, control, rooms=rooms)
    await sim.close()
    await fake.close()


async def serve_control(fake: FakeDiscord, sim: KlingSimulator, control: web.Application, **extra: Any) -> None:
    """Serve the control app, print where everything is (one JSON line the driver reads), and return when the
    driver closes our stdin."""
    runner, port = await serve(control, "127.0.0.1", 0)
    where = {"api": fake.api_base, "gateway": fake.gateway_url, "token": fake.token, "sim": sim.base_url()}
    print(json.dumps(where | {"control": f"http://127.0.0.1:{port}"} | extra), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


# --- the bench process: the bot, and the measures ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def fakes_process(*args: str, module: str = "bench.flood") -> AsyncIterator[dict[str, Any]]:
    """`python -m MODULE --serve ARGS` as a child (bench.soak's fakes too); yields where its fakes and control API
    listen (the JSON line it prints), and ends it by closing its stdin."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "--serve", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stdin is not None
    try:
        yield json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def running_bot(where: dict[str, Any], folder: Path) -> AsyncIterator[VideoBot]:
    """The real bot, as tests/harness.py starts it, pointed at the child's fakes."""
    settings = load_settings(
        env_file=None, discord_token=where["token"], kling_api_key=KEY, kling_endpoint_path="flood",
        kling_base_url=where["sim"], database_path=folder / "bot.sqlite3", poll_interval_seconds=POLL_SECONDS,
        discord_api_base_url=where["api"], discord_gateway_url=where["gateway"], api_max_retries=1,
        member_jobs_in_flight=100, server_jobs_in_flight=1000, provider_concurrency=1000,
        default_quota_credits=1e9,
    )  # fmt: skip
    apply_discord_endpoints(settings)
    async with open_resources(settings) as resources:
        bot = VideoBot(settings, resources, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
        try:
            await asyncio.wait_for(bot.wait_until_ready(), 30)
            yield bot
        finally:
            await bot.close()
            await task


def pace_as_it_was(pace: Pace) -> None:
    """The global pace before this round, kept here as the baseline: a turn counted for a second from the moment the
    request is let through, however late Discord gets it."""
    wait = pace.wait

    async def let_through(lane: Lane = Lane.MEMBER) -> None:
        await wait(lane)
        Pace.done(pace)  # the turn's second starts now

    pace.wait = let_through  # type: ignore[method-assign]
    pace.done = lambda: None  # type: ignore[method-assign]


def one_lane(pace: Pace) -> None:
    """The pace before members went first: every request in one line, first come first served."""
    wait = pace.wait
    pace.wait = lambda lane=Lane.MEMBER: wait(Lane.MEMBER)  # type: ignore[method-assign,misc]


def videos_in_the_background(pace: Pace) -> None:
    """The lanes before the videos went first: a video's post in line with the card and status edits."""
    wait = pace.wait

    async def in_line(lane: Lane = Lane.MEMBER) -> None:
        await wait(Lane.BACKGROUND if lane == Lane.VIDEO else lane)

    pace.wait = in_line  # type: ignore[method-assign]


BASELINES = {  # --compare's baselines: what it changes in the bot, and what the table calls it
    "videos": (videos_in_the_background, "the videos' posts in the background lane with the card edits"),
    "pace": (pace_as_it_was, "each turn counted from the moment its request was let through"),
    "lanes": (one_lane, "every Discord request in one line, first come first served"),
}


async def loop_lag(lags: list[float]) -> None:
    """How late the bot's event loop wakes a sleeper, every LAG_EVERY seconds until cancelled."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(LAG_EVERY)
        lags.append(time.perf_counter() - asked - LAG_EVERY)


async def members_videos(store: Any, members: int, field: str) -> dict[str, Job]:
    """The acting members' own jobs that have `field` set (their card, or their posted video)."""
    jobs = await store.jobs_in(("submitted", "processing", "succeeded", "delivered"))
    return {j.id: j for j in jobs if j.prompt.startswith("mine ") and getattr(j, field) is not None}


def kind(method: str, path: str) -> str:
    route, _ = rate_limit_route(method, path)
    if "threads" in route:
        return "thread ops"
    if route == "POST /channels/{channel_id}/messages":
        return "message posts"
    if route == "PATCH /channels/{channel_id}/messages/{id}":
        return "message edits"
    return "others"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else float("nan")


def floor_seconds(requests: list[tuple[str, str]]) -> tuple[float, str]:
    """The least time Discord's limits allow for these (method, path) requests: (seconds, the binding limit)."""
    buckets = Counter(rate_limit_route(m, p) for m, p in requests)
    worst, why = 0.0, "none"
    for (route, _), count in buckets.items():
        limit = ROUTE_LIMITS.get(route, DEFAULT_LIMIT)
        seconds = (math.ceil(count / limit.requests) - 1) * limit.seconds
        if seconds > worst:
            worst, why = seconds, f"{route} ({count} in one bucket)"
    counted = sum(1 for _, p in requests if not p.startswith(GLOBAL_EXEMPT))
    seconds = (math.ceil(counted / GLOBAL_LIMIT.requests) - 1) * GLOBAL_LIMIT.seconds
    if seconds > worst:
        worst, why = seconds, f"global 50/s ({counted} requests)"
    return worst, why


async def flood(
    videos: int, channels: int, wait: float, members: int, baseline: str = "", ack_commands: int = ACK_COMMANDS
) -> dict[str, float]:
    """Make `videos` jobs over `channels` channels, finish them all at once, measure until all are delivered.
    Meanwhile `members` other members each ask `/video status` and press Re-roll and Delete under a video of
    their own (made and delivered before the flood). `baseline`: a key of BASELINES, the bot's pace as it was."""
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="flood-") as tmp:
        async with (
            fakes_process("--channels", str(channels), "--members", str(members)) as where,
            running_bot(where, Path(tmp)) as bot,
            aiohttp.ClientSession() as control,
        ):
            if baseline:
                BASELINES[baseline][0](bot.pace)
            store = bot.resources.store

            async def slash(n: int, user: str, prompt: str) -> str:
                body = {"n": n, "user": user, "prompt": prompt}
                async with control.post(f"{where['control']}/slash", json=body) as response:
                    return str((await response.json())["id"])

            async def call(path: str, **body: Any) -> str:
                async with control.post(f"{where['control']}{path}", json=body) as response:
                    return str((await response.json()).get("id", ""))

            own: dict[str, Job] = {}
            if members:
                print(f"{members} members make a video each before the flood...", flush=True)
                await asyncio.gather(*(slash(n, f"acting{n}", f"mine {n}") for n in range(members)))
                while len(await members_videos(store, members, "status_message_id")) < members:
                    await asyncio.sleep(0.2)
                await call("/finish-now")
                while len(mine := await members_videos(store, members, "result_message_id")) < members:
                    await asyncio.sleep(0.2)
                own = mine

            print(f"Creating {videos} jobs over {channels} channel(s) (not rate limited)...", flush=True)
            started = time.perf_counter()
            for first in range(0, videos, 100):
                await asyncio.gather(*(
                    slash(n, f"member{n % USERS}", f"flood {n}") for n in range(first, min(videos, first + 100))
                ))  # fmt: skip
            while sum(j.status_message_id is not None for j in await store.jobs_in(AT_PROVIDER)) < videos:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # the commands' last followups
            flood_jobs = await store.jobs_in(AT_PROVIDER)
            print(f"  {videos} jobs in flight after {time.perf_counter() - started:.1f} s; finishing all", flush=True)

            async with control.post(f"{where['control']}/finish") as response:
                await response.json()
            finished = time.perf_counter()
            lags: list[float] = []
            lag_task = asyncio.create_task(loop_lag(lags))
            acks: list[str] = []
            acting: dict[str, list[str]] = {"/video status": [], "Re-roll": [], "Delete": []}

            async def act(n: int, job: Job) -> None:
                user = f"acting{n}"
                acting["/video status"].append(await call("/status", user=user))
                for label, action in (("Re-roll", "reroll"), ("Delete", "delete")):
                    custom_id, message_id = f"video:{action}:{job.id}", str(job.result_message_id)
                    acting[label].append(await call("/press", custom_id=custom_id, message_id=message_id, user=user))

            async def members_act() -> None:
                presses = []
                for n, job in enumerate(own.values()):
                    presses.append(asyncio.create_task(act(n, job)))
                    await asyncio.sleep(MEMBERS_SPREAD / max(len(own), 1))
                await asyncio.gather(*presses)

            acting_task = asyncio.create_task(members_act())
            for n in range(ack_commands):  # members keep using the bot during the flood
                acks.append(await slash(n, f"member{USERS + n}", f"during the flood {n}"))
                await asyncio.sleep(ACK_EVERY)
            await acting_task
            ids = {j.id for j in flood_jobs}
            while time.perf_counter() - finished < wait:
                done = [j for j in await store.jobs_in(("delivered", "undeliverable", "failed")) if j.id in ids]
                if len(done) == videos:
                    break
                await asyncio.sleep(0.5)
            drained = time.perf_counter() - finished
            seen = -1
            while time.perf_counter() - finished < wait:  # until Discord hears nothing for a bucket's window
                async with control.get(f"{where['control']}/count") as response:
                    now = await response.json()
                if now == seen:
                    break
                seen = now
                await asyncio.sleep(QUIET)
            lag_task.cancel()
            every_id = acks + [i for ids_ in acting.values() for i in ids_]
            async with control.post(f"{where['control']}/stats", json={"ids": every_id}) as response:
                stats = await response.json()
            stats["lags"] = lags
            answers = stats["answers"]
            stats["acks"] = [answers[i] for i in acks if i in answers]
            stats["acting"] = {what: [answers[i] for i in ids_ if i in answers] for what, ids_ in acting.items()}
            stats["issued"] = {what: len(ids_) for what, ids_ in acting.items()}
            ended = await store.jobs_in(("delivered", "undeliverable", "failed", "succeeded"))
            outcome = Counter(j.status for j in ended if j.id in ids)
    return report(videos, channels, flood_jobs, stats, outcome, drained)


def report(
    videos: int,
    channels: int,
    jobs: list[Job],
    stats: dict[str, Any],
    outcome: Counter[str],
    drained: float,
) -> dict[str, float]:
    """Print the table, and the flood's requests by route; return the figures a comparison shows."""
    t0 = stats["t0"]
    threads = {str(j.thread_id) for j in jobs if j.thread_id}
    cards = {str(j.message_id) for j in jobs if j.message_id}

    def ours(path: str) -> bool:
        """A request made for the flood's jobs (not for the commands issued during it)."""
        parts = path.strip("/").split("/")
        if parts[0] != "channels":
            return not path.startswith(GLOBAL_EXEMPT)
        return parts[1] in threads or (len(parts) > 3 and parts[3] in cards)

    def in_a_thread(path: str) -> bool:
        parts = path.strip("/").split("/")
        return parts[0] == "channels" and len(parts) > 1 and parts[1] in threads

    mine = [(m, p, s, at) for m, p, s, at in stats["requests"] if ours(p)]
    posts = [at for m, p, s, at in mine if m == "POST" and s == 200 and p.strip("/").split("/")[1] in threads]
    first_post, last_post = min(posts, default=t0) - t0, max(posts, default=t0) - t0
    last_request = max((at for _, _, _, at in mine), default=t0) - t0
    # What shared the pace with the videos until the last one was posted (the pace-bound part of its time).
    before_last = Counter(
        "video posts" if m == "POST" and in_a_thread(p)
        else "card edits" if ours(p) and m == "PATCH" else "the flood's others" if ours(p) else "members' requests"
        for m, p, _, at in stats["requests"] if at <= t0 + last_post and not p.startswith(GLOBAL_EXEMPT)
    )  # fmt: skip
    delivered = outcome["delivered"]
    kinds = Counter(kind(m, p) for m, p, _, _ in mine)

    def where(path: str) -> str:
        parts = path.split("/")
        return "" if parts[1] != "channels" else " in a job thread" if parts[2] in threads else " in the channel"

    routes = Counter(
        f"{rate_limit_route(m, p)[0]}{where(p)}{' (answered 429)' if s == 429 else ''}" for m, p, s, _ in mine
    )
    refused = [(m, p) for m, p, s, _ in stats["requests"] if s == 429]
    rooms = {str(j.channel_id) for j in jobs if j.channel_id}

    def refused_where(path: str) -> str:
        """Where a refused request went: a job's card in a channel, or a thread (a status message, a video)."""
        parts = path.strip("/").split("/")
        return "others" if parts[0] != "channels" else "in a channel" if parts[1] in rooms else "in a thread"

    last_edit = {p: s for m, p, s, _ in mine if m == "PATCH"}
    stale = sum(1 for s in last_edit.values() if s == 429)
    floor, why = floor_seconds([(m, p) for m, p, s, _ in mine if s != 429])
    minimum = (math.ceil(videos / GLOBAL_LIMIT.requests) - 1) * GLOBAL_LIMIT.seconds
    undone = videos - sum(outcome.values()) + outcome["succeeded"]
    every = sorted(at for _, p, _, at in stats["requests"] if not p.startswith(GLOBAL_EXEMPT))
    peak = max((bisect.bisect_left(every, a + 1.0) - i for i, a in enumerate(every)), default=0)
    window = [t for t in stats["queries"] if t <= t0 + max(last_post, drained)]
    gaps = [b - a for a, b in zip([t0, *window], window, strict=False)]
    acks = [b - a for a, b, _ in stats["acks"] if b is not None]
    acting = {
        what: [c - a for a, _, c in answers if c is not None] for what, answers in stats.get("acting", {}).items()
    }
    every_final = [t for times in acting.values() for t in times]
    lags = stats.get("lags", [])
    refused_global = sum(1 for _, is_global in stats["limited"] if is_global)
    per = max(delivered, 1)
    rows = [
        ("videos delivered / undeliverable / failed / not done",
         f"{delivered} / {outcome['undeliverable']} / {outcome['failed']} / {undone}",
         f"{videos} finished at once, {channels} channel(s)"),
        ("Discord requests per delivered video (from the finish)", f"{len(mine) / per:.2f}",
         f"{len(mine)} in all, 429s included"),
        *[(f"  {k}", f"{kinds[k] / per:.2f}", f"{kinds[k]}")
          for k in ("message posts", "message edits", "thread ops", "others")],
        ("429s received (all requests, during the flood)", f"{len(refused)}",
         "; ".join(f"{r}: {n} {'global' if g else 'route'}" for (r, g), n in Counter(
             (r, g) for r, g in stats["limited"]).most_common())),
        ("429s by where the request went", "",
         "; ".join(f"{w}: {n}" for w, n in Counter(refused_where(p) for _, p in refused).most_common())),
        ("edits given up after discord.py's 5 tries (message left stale)", f"{stale}", ""),
        ("finish to first video posted", f"{first_post:.1f} s", ""),
        ("finish to last video posted", f"{last_post:.1f} s", f"floor {minimum:.1f} s for one post per video"),
        ("Discord requests until the last video was posted", f"{sum(before_last.values())}",
         "; ".join(f"{what}: {n}" for what, n in before_last.most_common())),
        ("finish to the flood's last request (edits after the posts)", f"{last_request:.1f} s",
         f"floor {floor:.1f} s for these requests: {why}"),
        ("Discord requests in any sliding second, peak", f"{peak}",
         f"global limit {GLOBAL_LIMIT.requests} (interaction callbacks and followups not counted)"),
        (f"ack latency p50 / p99, {len(acks)} slash commands in the flood",
         f"{percentile(acks, 50) * 1000:.0f} / {percentile(acks, 99) * 1000:.0f} ms", "Discord allows 3000 ms"),
        *[(f"final answer p50 / p99, {what} ({len(times)} members during the flood)",
           f"{percentile(times, 50) * 1000:.0f} / {percentile(times, 99) * 1000:.0f} ms",
           f"answered {len(times)} of {stats['issued'][what]}")
          for what, times in acting.items()],
        *([("final answer p99, all the members' presses and commands",
            f"{percentile(every_final, 99) * 1000:.0f} ms", "goal: under 1000 ms")] if every_final else []),
        ("poll loop: longest gap between queries", f"{max(gaps, default=float('nan')):.1f} s",
         f"{len(window)} queries; interval {POLL_SECONDS:g} s"),
        ("the bot's event loop lag p50 / p99 / max, from the finish to the last request",
         " / ".join(f"{lag * 1000:.1f}" for lag in (percentile(lags, 50), percentile(lags, 99), max(lags, default=0)))
         + " ms",
         f"{len(lags)} looks, one every {LAG_EVERY * 1000:.0f} ms; goal: p99 under 20 ms"),
    ]  # fmt: skip
    print("\n| measure | figure | beside it |\n|---|---|---|")
    for measure, figure, other in rows:
        print(f"| {measure} | {figure} | {other} |")
    print("\nRequests by route (the flood's jobs):")
    for route, count in routes.most_common():
        print(f"  {count:>6}  {count / per:6.2f}/video  {route}")
    summary = {f"final answer p99, {what} (ms)": percentile(times, 99) * 1000 for what, times in acting.items()}
    if every_final:
        summary["final answer p99, all (ms)"] = percentile(every_final, 99) * 1000
    return summary | {
        "429s received": float(len(refused)),
        "429s on the global limit": float(refused_global),
        "Discord requests in any sliding second, peak": float(peak),
        "Discord requests per delivered video": len(mine) / per,
        "finish to last video posted (s)": last_post,
        "finish to the flood's last request (s)": last_request,
        "event loop lag p99 (ms)": percentile(lags, 99) * 1000,
        "delivered": float(delivered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="50 videos")
    parser.add_argument("--acks", type=int, default=ACK_COMMANDS, help="slash commands during the flood (at most 50)")
    parser.add_argument("--channels", type=int, default=10, help="text channels the jobs are spread over")
    parser.add_argument("--members", type=int, default=200, help="members pressing buttons during the flood")
    parser.add_argument(
        "--compare", nargs="?", const="videos", choices=sorted(BASELINES),
        help="run once with the pace as it was (videos: the videos' posts behind the edits; pace: counted from the "
        "start; lanes: one lane), then as it is",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the deliveries")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_fakes(args.channels, args.members))
        return
    members = min(args.members, 20) if args.quick else args.members
    videos = 50 if args.quick else args.videos
    if not args.compare:
        asyncio.run(flood(videos, args.channels, args.timeout, members, ack_commands=args.acks))
        return
    print(f"== as it was ({BASELINES[args.compare][1]}) ==", flush=True)
    before = asyncio.run(flood(videos, args.channels, args.timeout, members, args.compare, args.acks))
    print("\n== as it is ==", flush=True)
    after = asyncio.run(flood(videos, args.channels, args.timeout, members, ack_commands=args.acks))
    print(f"\n| measure | as it was ({args.compare}) | as it is | ratio |\n|---|---|---|---|")
    for measure, old in before.items():
        new = after.get(measure, float("nan"))
        print(f"| {measure} | {old:.1f} | {new:.1f} | {f'{new / old:.2f}' if old else '-'} |")


if __name__ == "__main__":
    main()

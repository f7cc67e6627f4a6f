"""A soak of the fleet: N bot processes on one PostgreSQL, one Discord shard each, SIGKILLed now and then.

Run: `.venv/bin/python -m bench.soak --jobs 10000 --processes 3 --faults 0.1 --kill-every 30`, or `--scaling`
for jobs per second with 1, 2 and 4 processes at zero render time. The fake Discord (sharded) and the Kling
simulator run in a child process (`--serve`, as bench/flood.py runs them) so their work never shares the driver's
event loop; the bots are real `python -m bot run` processes. `--faults R` injects provider errors, time-outs and
lost submit answers, and Discord 5xx answers to posts and edits, at rate R of the requests each receives.

It prints what must be zero (jobs lost, sent twice, posted twice, credits out of balance) and jobs delivered per
second. `tests/storage/test_fleet_kill.py` runs the same fleet and the same audit with the fakes in the test process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web

from bench.flood import fakes_process, serve_control
from bot.core.model import FINAL, OPEN, STATES, Job
from bot.provider.sim_tasks import RATES
from bot.provider.sim_variant import GatewayVariant
from bot.provider.simulator import KlingSimulator
from tests.fake_discord import FakeDiscord, Interaction, wait_until
from tests.ports import free_port

KEY = "sk-soak-secret-key-0123"
ENDPOINT = "soak"
GUILDS_PER_SHARD = 2
MEMBERS = 30
PROVIDER_FAULTS = ("server_error", "unavailable", "html", "slow", "accept_then_error")
API_TIMEOUT = 2.0  # the bots' API_TIMEOUT_SECONDS; a "slow" fault answers later than that: a time-out
DISCORD_FAULTS = (("POST", r"^/channels/\d+/messages$"), ("PATCH", r"^/channels/\d+/messages/\d+$"))
TICKS = "kling_bot_poll_tick_seconds_count "
BATCH = 50  # commands sent at once
OPEN_JOBS = 500  # more commands wait while this many sent have not made a final job
# A command unanswered this long went to a process killed before it answered: it will make no job.
ANSWER_SECONDS = 20.0


# --- the world: a sharded fake Discord and the simulator --------------------------------------------------------


def make_world(shards: int, render_seconds: float) -> tuple[FakeDiscord, KlingSimulator]:
    """Guilds spread over the shards, MEMBERS members, and a simulator that does not refuse a second task under one
    external id (so a job sent twice shows as two tasks, and two bills)."""
    fake = FakeDiscord(shards=shards)
    for n in range(GUILDS_PER_SHARD * shards):
        fake.add_guild(f"guild{n}", shard=n % shards)
    for n in range(MEMBERS):
        fake.add_user(f"member{n}")
    variant = GatewayVariant(dedupe_external_ids=False)
    sim = KlingSimulator(api_key=KEY, endpoint_path=ENDPOINT, render_seconds=render_seconds, variant=variant)
    return fake, sim


def soak_guilds(fake: FakeDiscord) -> list[str]:
    """The guilds jobs are made in (every guild but the fake's first, which is on no chosen shard)."""
    return [g for g in fake.guild_names if g != fake.guild_id]


async def command(fake: FakeDiscord, n: int, *, within: float = 60.0) -> Interaction:
    """`/video text` number n: a member and a guild in turn, sent once a session holds that guild's shard (Discord
    drops the events of a shard nobody holds)."""
    guilds = soak_guilds(fake)
    guild_id = guilds[n % len(guilds)]
    shard = (fake.shard_of(guild_id), fake.shard_count)
    await wait_until(lambda: shard in fake.connected_shards, within=within, interval=0.05)
    channel = fake.text_channel(guild_id)
    return await fake.slash("video", {"prompt": prompt(n)}, sub="text", user=f"member{n % MEMBERS}", channel=channel)


def prompt(n: int) -> str:
    return f"soak job {n}"


def accepted(interaction: Interaction) -> bool:
    """Whether the bot told the member their video is on its way (a job it must not lose); a command whose process
    was killed before that may have made no job, as the member sees."""
    return any("is on its way" in message["content"] for message in interaction.followups)


def answered(interaction: Interaction) -> bool:
    """Whether the member has the command's answer (a defer alone is not one: its follow-up is still to come)."""
    return bool(interaction.followups) or any(callback.get("type") == 4 for callback in interaction.callbacks)


def world_counts(fake: FakeDiscord, sim: KlingSimulator) -> dict[str, Any]:
    """What the fakes saw: tasks per external id, milli-credits billed, result posts per job (their nonce)."""
    billed = sum(int(RATES[t.resolution] * t.duration * 1000) for t in sim.tasks.values() if t.status == "succeeded")
    posts = Counter(
        str(m["nonce"])[2:]
        for channel in fake.messages.values()
        for m in channel
        if m["files"] and str(m.get("nonce") or "").startswith("kv")
    )
    return {
        "tasks": Counter(str(t.external_id) for t in sim.tasks.values()),
        "billed": billed,
        "posts": dict(posts),
    }


def faultable(method: str, path: str) -> bool:
    return any(method == m and re.search(pattern, path) for m, pattern in DISCORD_FAULTS)


async def inject_faults(fake: FakeDiscord, sim: KlingSimulator, rate: float, seed: int) -> None:
    """Until cancelled: for every request the simulator receives, and every post or edit Discord receives, a fault
    on a later one of the same kind at `rate`."""
    rng = random.Random(seed)
    seen_sim, seen_discord, owed_sim, owed_discord = 0, 0, 0.0, 0.0
    while True:
        await asyncio.sleep(0.05)
        owed_sim += (len(sim.requests) - seen_sim) * rate
        arrived, seen_discord = fake.requests[seen_discord:], len(fake.requests)
        owed_discord += sum(1 for r in arrived if faultable(r.method, r.path)) * rate
        seen_sim = len(sim.requests)
        while owed_sim >= 1:
            owed_sim -= 1
            sim.fail_next(rng.choice(PROVIDER_FAULTS), delay=API_TIMEOUT + 1)
        while owed_discord >= 1:
            owed_discord -= 1
            method, path = rng.choice(DISCORD_FAULTS)
            fake.fail_next(method, path, rng.choice((500, 502, 503)))


# --- the fleet: real bot processes ------------------------------------------------------------------------------


def fleet_env(api: str, gateway: str, token: str, sim: str, database_url: str, **extra: str) -> dict[str, str]:
    """The bots' settings, by environment: the fakes, the database, room for many jobs, short waits and leases."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_", "DATABASE_", "SHARD_"))}
    env.update(
        DISCORD_TOKEN=token, DISCORD_API_BASE_URL=api, DISCORD_GATEWAY_URL=gateway,
        KLING_API_KEY=KEY, KLING_ENDPOINT_PATH=ENDPOINT, KLING_BASE_URL=sim, DATABASE_URL=database_url,
        POLL_INTERVAL_SECONDS="0.2", API_TIMEOUT_SECONDS=str(API_TIMEOUT), API_MAX_RETRIES="2",
        SUBMIT_LOOKUP_SECONDS="10", LEASE_SECONDS="3",
        # Each process at the whole bot's pace: the fake's limits are off, and the bench measures the processes.
        DISCORD_REQUESTS_PER_SECOND="45",
        MEMBER_JOBS_IN_FLIGHT="100", SERVER_JOBS_IN_FLIGHT="1000", PROVIDER_CONCURRENCY="1000",
        DEFAULT_QUOTA_CREDITS="1000000000", DEFAULT_QUOTA_PERIOD="total", LOG_LEVEL="WARNING",
    )  # fmt: skip
    env.update(extra)
    return env


class Fleet:
    """`python -m bot run` processes, process i running shard i of `count`; each logs to its own file (appended
    over restarts) and serves its metrics on its own port."""

    def __init__(self, env: dict[str, str], count: int, folder: Path) -> None:
        self.env, self.count, self.folder = env, count, folder
        self.processes: list[asyncio.subprocess.Process | None] = [None] * count
        self.ports = [free_port() for _ in range(count)]
        self.kills = 0
        self._logs: list[IO[bytes]] = []

    async def start(self, index: int) -> None:
        log = (self.folder / f"bot{index}.log").open("ab")
        self._logs.append(log)
        self.processes[index] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", "--shard-ids", str(index), "--shard-count", str(self.count),
            env=self.env | {"METRICS_PORT": str(self.ports[index])}, cwd=self.folder,
            stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )  # fmt: skip

    async def start_all(self) -> None:
        for index in range(self.count):
            await self.start(index)

    async def kill(self, index: int) -> None:
        """SIGKILL process `index` (no chance to clean up) and start it again."""
        process = self.processes[index]
        assert process is not None
        process.send_signal(signal.SIGKILL)
        await process.wait()
        self.kills += 1
        await self.start(index)

    def log(self, index: int) -> str:
        return (self.folder / f"bot{index}.log").read_text(errors="replace")

    def check_alive(self) -> bool:
        """True while every process runs; one that stopped by itself is an error, with the end of its log."""
        for index, process in enumerate(self.processes):
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"bot {index} exited with {process.returncode}: {self.log(index)[-3000:]}")
        return True

    async def ticks(self, index: int) -> float:
        """The poll ticks process `index` has counted (its Prometheus endpoint); 0 while it starts."""
        url = f"http://127.0.0.1:{self.ports[index]}/metrics"
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as answer:
                text = await answer.text()
        except aiohttp.ClientError:
            return 0.0
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(TICKS)), 0.0)

    async def more_ticks(self, count: int = 5, within: float = 30.0) -> None:
        """Until every process has run `count` more poll ticks: a window in which a late duplicate would show."""
        targets = [await self.ticks(i) + count for i in range(self.count)]

        async def reached() -> bool:
            return all([await self.ticks(i) >= target for i, target in enumerate(targets)])

        await wait_until(reached, within=within, interval=0.1)

    async def stop(self) -> list[int]:
        """SIGTERM every process; their exit codes (a process still running after 15 s is killed: -9)."""
        for process in self.processes:
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
        codes = []
        for process in self.processes:
            if process is None:
                continue
            try:
                codes.append(await asyncio.wait_for(process.wait(), 15))
            except TimeoutError:
                process.kill()
                codes.append(await process.wait())
        for log in self._logs:
            log.close()
        return codes


@contextlib.asynccontextmanager
async def running_fleet(env: dict[str, str], count: int, folder: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(env, count, folder)
    try:
        await fleet.start_all()
        yield fleet
    finally:
        await fleet.stop()


async def kill_now_and_then(fleet: Fleet, every: float, seed: int, stop: asyncio.Event) -> None:
    """Until `stop` is set: every `every` seconds SIGKILL a process chosen at random (seeded) and start it again
    (never left dead: a kill under way finishes with the restart)."""
    rng = random.Random(seed)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if not stop.is_set():
            await fleet.kill(rng.randrange(fleet.count))


# --- the audit ------------------------------------------------------------------------------------------------


@dataclass
class Audit:
    """What must be zero after a soak, and what was delivered."""

    jobs: int
    lost: int  # not final, or delivered with no post, or a command accepted ("on its way") with no job
    sent_twice: int  # jobs with more than one task at the provider
    posted_twice: int  # jobs with more than one result post
    credits_out: int  # milli-credits charged in the store minus billed by the provider (either way), plus held
    delivered: int
    why_lost: str = ""
    used: int = 0  # milli-credits charged in the store
    billed: int = 0  # milli-credits the provider billed
    reserved: int = 0  # milli-credits still held in the store

    @property
    def clean(self) -> bool:
        return self.lost == self.sent_twice == self.posted_twice == self.credits_out == 0


async def audit(store: Any, counts: dict[str, Any], accepted: Iterable[str] = ()) -> Audit:
    """Compare the store's jobs and credits with what the simulator and the fake Discord saw."""
    jobs: list[Job] = await store.jobs_in(("reserved", "queued", "submitted", "processing", "succeeded", *FINAL))
    prompts = {job.prompt for job in jobs}
    tasks: Counter[str] = Counter(counts["tasks"])
    posts: Counter[str] = Counter(counts["posts"])
    used = reserved = 0
    for guild_id, user_id in {(job.guild_id, job.user_id) for job in jobs}:
        usage = await store.usage(guild_id, user_id, 0)
        used, reserved = used + usage.used, reserved + usage.reserved
    open_ = sum(1 for job in jobs if job.status not in FINAL)
    unposted = sum(1 for job in jobs if job.status == "delivered" and posts[job.id] == 0)
    jobless = sum(1 for text in accepted if text not in prompts)
    return Audit(
        jobs=len(jobs),
        lost=open_ + unposted + jobless,
        why_lost=f"{open_} not final, {unposted} delivered unposted, {jobless} accepted without a job",
        used=used,
        billed=counts["billed"],
        reserved=reserved,
        sent_twice=sum(1 for job in jobs if tasks[job.id] > 1),
        posted_twice=sum(1 for job in jobs if posts[job.id] > 1),
        credits_out=abs(used - counts["billed"]) + reserved,
        delivered=sum(1 for job in jobs if job.status == "delivered"),
    )


async def all_final(store: Any) -> bool:
    return await store.count_in(OPEN) == 0


# --- the child process: the fakes and a control API --------------------------------------------------------


async def serve_fakes(shards: int, render_seconds: float, faults: float, seed: int) -> None:
    """Start both fakes, print where they listen (one JSON line), serve the control API until stdin closes."""
    fake, sim = make_world(shards, render_seconds)
    await fake.start()
    await sim.start()
    sent: dict[int, Interaction] = {}
    sent_at: dict[int, float] = {}
    injecting = asyncio.get_running_loop().create_task(inject_faults(fake, sim, faults, seed)) if faults else None

    async def slash(request: web.Request) -> web.Response:
        n = int((await request.json())["n"])
        sent_at[n] = time.monotonic()
        sent[n] = await command(fake, n)
        return web.json_response({"n": n})

    async def waiting(request: web.Request) -> web.Response:
        """Commands still to be answered; one unanswered for ANSWER_SECONDS went to a killed process (as Discord
        would fail it), so it no longer counts."""
        now = time.monotonic()
        late = [n for n, i in sent.items() if not answered(i) and now - sent_at[n] < ANSWER_SECONDS]
        return web.json_response(len(late))

    async def accepted_ones(request: web.Request) -> web.Response:
        return web.json_response([prompt(n) for n, i in sent.items() if accepted(i)])

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(world_counts(fake, sim))

    async def calm(request: web.Request) -> web.Response:
        """No more faults from now on."""
        if injecting is not None:
            injecting.cancel()
        sim.clear_faults()  # Discord's pending faults play out on the next few requests
        return web.json_response(True)

    control = web.Application()
    control.router.add_post("/slash", slash)
    control.router.add_get("/accepted", accepted_ones)
    control.router.add_get("/waiting", waiting)
    control.router.add_get("/counts", counts)
    control.router.add_post("/calm", calm)
    await serve_control(fake, sim, control)
    if injecting is not None:
        injecting.cancel()
    await sim.close()
    await fake.close()


# --- the driver -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(url: str | None) -> Any:
    """The given PostgreSQL URL, or a throwaway server (the `pgserver` wheel the tests use) for the run."""
    if url:
        yield url
        return
    from tests.postgres import start_server

    server = start_server()
    try:
        server.admin("CREATE DATABASE soak")
        yield server.dsn("soak")
    finally:
        server.stop()


@dataclass
class Run:
    audit: Audit
    seconds: float  # from the first command to every job final
    kills: int
    unaccepted: int  # commands whose process was killed before it said "on its way" (or that were refused)
    states: dict[str, int]  # jobs by state at the end

    @property
    def per_second(self) -> float:
        return self.audit.delivered / self.seconds


async def soak(
    jobs: int, processes: int, *, faults: float, kill_every: float, render: float, seed: int, url: str | None,
    within: float,
) -> Run:  # fmt: skip
    """One soak: start the fakes and the fleet, make `jobs` jobs (killing a process now and then), wait until every
    job is final, let every process tick a few more times, and audit."""
    from bot.storage.postgres import PgStore

    child = ("--shards", str(processes), "--render-seconds", str(render), "--faults", str(faults), "--seed", str(seed))
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, database(url) as dsn:
        async with fakes_process(*child, module="bench.soak") as where, aiohttp.ClientSession() as control:
            env = fleet_env(where["api"], where["gateway"], where["token"], where["sim"], dsn)
            async with running_fleet(env, processes, Path(tmp)) as fleet:
                store = await PgStore.open(dsn)
                try:
                    return await _drive(fleet, store, control, where["control"], jobs, kill_every, seed, within)
                finally:
                    await store.close()


async def _drive(
    fleet: Fleet, store: Any, control: aiohttp.ClientSession, url: str, jobs: int, kill_every: float, seed: int,
    within: float,
) -> Run:  # fmt: skip
    async def get(path: str) -> Any:
        async with control.get(f"{url}{path}") as answer:
            return await answer.json()

    async def send(n: int) -> None:
        async with control.post(f"{url}/slash", json={"n": n}) as answer:
            answer.raise_for_status()

    async def room(sent: int) -> bool:
        fleet.check_alive()
        return sent - await store.count_in(FINAL) < OPEN_JOBS

    started = time.perf_counter()
    stop = asyncio.Event()
    killer = kill_now_and_then(fleet, kill_every, seed, stop) if kill_every else stop.wait()
    killing = asyncio.get_running_loop().create_task(killer)
    try:
        for first in range(0, jobs, BATCH):  # members keep sending while the fleet has work, not all at once
            await wait_until(lambda: room(first), within=within, interval=0.2)  # noqa: B023
            await asyncio.gather(*(send(n) for n in range(first, min(jobs, first + BATCH))))

        async def done() -> bool:
            fleet.check_alive()
            if await get("/waiting"):  # a command not yet answered may still make a job
                return False
            taken = await get("/accepted")
            return await all_final(store) and len(await store.jobs_in(FINAL)) >= len(taken)

        with contextlib.suppress(AssertionError):  # not done in time: the audit counts what is not final as lost
            await wait_until(done, within=within, interval=0.5)
    finally:
        stop.set()
        await killing
    seconds = time.perf_counter() - started
    async with control.post(f"{url}/calm"):
        pass
    with contextlib.suppress(AssertionError):
        await fleet.more_ticks()
    taken = await get("/accepted")
    result = await audit(store, await get("/counts"), taken)
    states = Counter(job.status for job in await store.jobs_in(STATES))
    return Run(result, seconds, fleet.kills, jobs - len(taken), dict(states))


def print_soak(run: Run, jobs: int, processes: int, faults: float, kill_every: float) -> None:
    a = run.audit
    print(f"\n{jobs} commands, {processes} processes (one shard each), faults {faults:g}, "
          f"a SIGKILL every {kill_every:g} s ({run.kills} in all)\n")  # fmt: skip
    print("| measure | figure |\n|---|---|")
    for measure, figure in (
        ("jobs made (by state at the end)", f"{a.jobs} ({', '.join(f'{k} {v}' for k, v in run.states.items())})"),
        ("commands not accepted (their process killed before answering, or refused)", run.unaccepted),
        ("jobs lost", a.lost if not a.lost else f"{a.lost} ({a.why_lost})"),
        ("jobs sent twice", a.sent_twice),
        ("jobs posted twice", a.posted_twice),
        ("credits out of balance (milli-credits)", a.credits_out),
        ("jobs delivered", a.delivered),
        ("jobs delivered per second", f"{run.per_second:.1f} ({run.seconds:.1f} s)"),
    ):
        print(f"| {measure} | {figure} |")


async def scaling(jobs: int, url: str | None, within: float) -> None:
    """Jobs per second with 1, 2 and 4 processes, nothing injected, zero render time."""
    print(f"\n{jobs} jobs, zero render time, no faults, no kills\n")
    print("| processes | seconds | jobs delivered per second | lost / sent twice / posted twice / out of balance |")
    print("|---|---|---|---|")
    for processes in (1, 2, 4):
        run = await soak(jobs, processes, faults=0, kill_every=0, render=0, seed=0, url=url, within=within)
        a = run.audit
        print(f"| {processes} | {run.seconds:.1f} | {run.per_second:.1f} | "
              f"{a.lost} / {a.sent_twice} / {a.posted_twice} / {a.credits_out} |", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--faults", type=float, default=0.0, help="rate of injected faults, 0-1")
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between SIGKILLs (0: none)")
    parser.add_argument("--render-seconds", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: a throwaway server)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for every job to end")
    parser.add_argument("--scaling", action="store_true", help="jobs per second with 1, 2 and 4 processes")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--shards", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: the bots and servers too
    if args.serve:
        asyncio.run(serve_fakes(args.shards, args.render_seconds, args.faults, args.seed))
        return 0
    if args.scaling:
        asyncio.run(scaling(args.jobs, args.database_url, args.timeout))
        return 0
    options = {"faults": args.faults, "kill_every": args.kill_every, "render": args.render_seconds}
    run = asyncio.run(
        soak(args.jobs, args.processes, **options, seed=args.seed, url=args.database_url, within=args.timeout)
    )
    print_soak(run, args.jobs, args.processes, args.faults, args.kill_every)
    return 0 if run.audit.clean else 1


if __name__ == "__main__":
    sys.exit(main())

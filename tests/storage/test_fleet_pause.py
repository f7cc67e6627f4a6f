"""Two bot processes on one PostgreSQL; the one delivering a video is SIGSTOPped (a VM pause, a long GC) past its
lease, the other takes the job over and posts it, then the paused one is resumed: the video is in the thread once.
The fake Discord forgets nonces here, so only the bot's own fencing can keep the paused process from posting."""

from __future__ import annotations

import signal
from pathlib import Path

from bench.soak import command, fleet_env, make_world, running_fleet
from bot.storage.postgres import PgStore
from cogs.delivery import post_nonce
from tests.fake_discord import FakeDiscord, wait_until

pytest_plugins = ["tests.postgres"]

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 2
STOPPED = "left to its new holder"  # what a deliverer that lost its claim logs as it gives up


def posts_of(fake: FakeDiscord, job_id: str) -> list[dict[str, object]]:
    """The job's video messages, in every channel."""
    return [m for ms in fake.messages.values() for m in ms if m.get("nonce") == post_nonce(job_id)]


async def test_a_process_paused_while_delivering_does_not_post_the_video_another_process_took_over(
    tmp_path: Path, postgres_dsn: str
) -> None:
    fake, sim = make_world(PROCESSES, render_seconds=0.3)
    fake.dedupe_nonces = False
    await fake.start()
    await sim.start()
    try:
        # PYTHONPATH: the bots run this tree's code even where an installed copy points at another checkout.
        extra = {"LEASE_SECONDS": "2", "PYTHONPATH": str(ROOT)}
        env = fleet_env(fake.api_base, fake.gateway_url, fake.token, sim.base_url(), postgres_dsn, **extra)
        async with running_fleet(env, PROCESSES, tmp_path) as fleet:
            store = await PgStore.open(postgres_dsn)
            try:
                shards = [(i, PROCESSES) for i in range(PROCESSES)]
                await wait_until(lambda: fleet.check_alive() and sorted(fake.connected_shards) == shards, within=30)
                sim.hold_videos()  # the deliverer waits on its download: pausing it there is pausing it mid-delivery
                await command(fake, 0, within=30)
                await wait_until(lambda: sim.video_requests, within=30)
                [job] = await store.jobs_in(("succeeded",))
                assert job.lease_owner is not None
                pid = int(job.lease_owner.split(":")[1])  # the owner is host:pid:random
                [paused] = [i for i, p in enumerate(fleet.processes) if p is not None and p.pid == pid]
                process = fleet.processes[paused]
                assert process is not None
                process.send_signal(signal.SIGSTOP)
                try:
                    sim.release_videos()  # its answer waits in the paused process's socket

                    async def taken_over_and_posted() -> bool:
                        current = await store.get_job(job.id)
                        return current is not None and current.status == "delivered"

                    await wait_until(taken_over_and_posted, within=30)
                    delivered = await store.get_job(job.id)
                    assert delivered is not None and delivered.lease_attempt > job.lease_attempt
                    assert len(posts_of(fake, job.id)) == 1
                finally:
                    process.send_signal(signal.SIGCONT)
                # Resumed, it goes on with its delivery: it must find its claim lost and post nothing.
                await wait_until(lambda: STOPPED in fleet.log(paused) or len(posts_of(fake, job.id)) > 1, within=30)
                await fleet.more_ticks()
                assert len(posts_of(fake, job.id)) == 1, fleet.log(paused)[-3000:]
                current = await store.get_job(job.id)
                assert current is not None and current.status == "delivered"
                assert current.result_message_id == int(str(posts_of(fake, job.id)[0]["id"]))
                codes = await fleet.stop()
            finally:
                await store.close()
    finally:
        await sim.close()
        await fake.close()
    assert codes == [0] * PROCESSES

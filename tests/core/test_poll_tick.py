"""The poll tick over the simulator and a real SQLite file: its lists of ids go out together (POLL_CONCURRENCY), it
settles the same jobs with the same queries as one list at a time, and it reads only narrow rows of the jobs it asks
about (a wide row only for a job that moved)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bot.config import load_settings
from bot.core.jobs import JobRequest, JobService
from bot.core.model import Job
from bot.provider.kling import KlingClient
from bot.provider.simulator import KlingSimulator
from bot.resources import open_resources
from bot.storage import sql_jobs as store_module  # where the rows are built
from bot.storage.sqlite import Store


def task_queries(sim: KlingSimulator) -> list[Any]:
    return [r for r in sim.requests if r.path.endswith("/kling/tasks")]


async def in_flight(sim: KlingSimulator, service: JobService, count: int) -> list[Job]:
    sim.hold = True
    return [await service.create(JobRequest("text", f"clip {n}")) for n in range(count)]


@pytest.mark.parametrize("at_once", [1, 4])
async def test_a_tick_settles_every_job_with_one_query_per_twenty_whatever_its_concurrency(
    sim: KlingSimulator, kling: KlingClient, store: Store, service: JobService, at_once: int
) -> None:
    kling.query_concurrency = at_once
    jobs = await in_flight(sim, service, 100)
    for job in jobs[:30]:
        sim.finish(job.provider_task_id)
    for job in jobs[30:40]:
        sim.finish(job.provider_task_id, fail_message="blocked by the content policy")
    before = len(task_queries(sim))
    changes = await service.poll_once()
    asked = [i for r in task_queries(sim)[before:] for i in r.query["task_ids"].split(",")]
    assert len(task_queries(sim)) - before == 5  # ceil(100 / 20), as one list after another
    assert sorted(asked) == sorted(job.provider_task_id for job in jobs)  # each job asked about once
    moved = {change.job.id: (change.previous, change.job.status) for change in changes}
    assert moved == {
        **{job.id: ("submitted", "succeeded") for job in jobs[:30]},
        **{job.id: ("submitted", "failed") for job in jobs[30:40]},
        **{job.id: ("submitted", "processing") for job in jobs[40:]},
    }
    rows = [row for job in jobs if (row := await store.get_job(job.id)) is not None]
    assert Counter(row.status for row in rows) == {"succeeded": 30, "failed": 10, "processing": 60}
    assert all(row.video_url and row.cost_billed == 4000 for row in rows[:30])  # billed 4.0 for 5 s at 720p
    assert all(row.lease_owner is None for row in rows)  # every claim given back
    before = len(task_queries(sim))
    assert await service.poll_once() == []  # the 60 still rendering: asked again, nothing moves
    assert len(task_queries(sim)) - before == 3


async def test_a_tick_where_nothing_moved_reads_no_whole_job_row(
    sim: KlingSimulator, service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await in_flight(sim, service, 60)
    await service.poll_once()  # submitted -> processing: these moves read their rows
    built = Counter[str]()

    def counted(name: str, kind: Any) -> Any:
        def build(*row: Any) -> Any:
            built[name] += 1
            return kind(*row)

        return build

    monkeypatch.setattr(store_module, "Job", counted("whole", Job))
    narrow = getattr(store_module, "InFlight", tuple)  # (the code before it had no narrow rows)
    monkeypatch.setattr(store_module, "InFlight", counted("narrow", narrow), raising=False)
    before = len(task_queries(sim))
    assert await service.poll_once() == []
    assert len(task_queries(sim)) - before == 3
    assert built["whole"] == 0  # no prompt, error or link of 60 jobs read to learn that they still render
    assert built["narrow"] == 60  # the list of jobs in flight (the claim returns only what the tick's work reads)


async def test_poll_concurrency_reaches_the_client(tmp_path: Path) -> None:
    settings = load_settings(
        env_file=None, kling_api_key="k", kling_endpoint_path="e", database_path=tmp_path / "bot.sqlite3",
        poll_concurrency=7,
    )  # fmt: skip
    async with open_resources(settings) as resources:
        assert resources.kling.query_concurrency == 7
    assert load_settings(env_file=None, kling_api_key="k", kling_endpoint_path="e").poll_concurrency == 4

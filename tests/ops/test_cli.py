"""`python -m bot` as a subprocess, against the simulator."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from importlib import resources
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from bot.core.jobs import JobRequest, JobService
from bot.provider.kling import KlingClient
from bot.provider.simulator import KlingSimulator
from bot.storage.sqlite import Store
from tests.conftest import API_KEY, make_image
from tests.harness import bot_process


def env_for(sim: KlingSimulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_", "DATABASE_"))}
    env.update(
        KLING_BASE_URL=sim.base_url(),
        KLING_API_KEY=API_KEY,
        KLING_ENDPOINT_PATH="acct-endpoint",
        DATABASE_PATH=str(tmp_path / "db.sqlite3"),
        POLL_INTERVAL_SECONDS="0.05",
    )
    env.update(extra)
    return env


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await bot_process(*args, env=env, cwd=cwd)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_generate_writes_the_exact_bytes_the_simulator_served(sim: KlingSimulator, tmp_path: Path) -> None:
    sim.render_seconds = 0.3
    out = tmp_path / "fox.mp4"
    code, stdout, stderr = await run_cli(
        "generate", "--prompt", "a fox", "--duration", "3", "--sound", "off", "--out", str(out),
        env=env_for(sim, tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    assert out.read_bytes() == (resources.files("bot") / "assets" / "sample.mp4").read_bytes()
    assert "elapsed" in stderr and "ok: job" in stdout
    [post] = [r for r in sim.requests if r.method == "POST"]
    assert post.json["settings"]["duration"] == 3 and post.json["settings"]["audio"] == "off"


async def test_generate_with_an_image_file(sim: KlingSimulator, tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    image.write_bytes(make_image(400, 400))
    code, _, stderr = await run_cli(
        "generate", "--image", str(image), "--out", str(tmp_path / "o.mp4"), env=env_for(sim, tmp_path), cwd=tmp_path
    )
    assert code == 0, stderr
    [post] = [r for r in sim.requests if r.method == "POST"]
    assert post.path.endswith("image-to-video/kling-3.0-turbo")


@pytest.mark.parametrize(
    "args",
    [
        ["--prompt", "x", "--duration", "20"],
        ["--prompt", "x", "--resolution", "4k"],
        ["--prompt", "x", "--aspect-ratio", "4:3"],
        ["--prompt", "x", "--sound", "loud"],
        ["--prompt", ""],
        ["--prompt", "x", "--image", "missing.png"],
    ],
)
async def test_bad_options_are_refused_before_anything_is_sent(
    sim: KlingSimulator, tmp_path: Path, args: list[str]
) -> None:
    code, _, stderr = await run_cli("generate", *args, "--out", "o.mp4", env=env_for(sim, tmp_path), cwd=tmp_path)
    assert code == 2 and stderr.startswith("error: ")
    assert sim.requests == []


async def test_a_refusal_exits_non_zero_with_the_providers_reason(sim: KlingSimulator, tmp_path: Path) -> None:
    code, _, stderr = await run_cli(
        "generate", "--prompt", "forbidden", "--out", "o.mp4", env=env_for(sim, tmp_path), cwd=tmp_path
    )
    assert code == 1 and "content policy" in stderr


async def test_a_render_failure_exits_non_zero(sim: KlingSimulator, tmp_path: Path) -> None:
    code, _, stderr = await run_cli(
        "generate", "--prompt", "fail-render", "--out", "o.mp4", env=env_for(sim, tmp_path), cwd=tmp_path
    )
    assert code == 1 and "failed" in stderr


async def test_a_missing_setting_is_one_clear_line(sim: KlingSimulator, tmp_path: Path) -> None:
    env = env_for(sim, tmp_path)
    del env["KLING_API_KEY"]
    env["POLL_INTERVAL_SECONDS"] = "soon"
    code, stdout, stderr = await run_cli("check", env=env, cwd=tmp_path)
    assert code == 2 and stdout == ""
    [line] = stderr.strip().splitlines()
    assert "KLING_API_KEY" in line and "POLL_INTERVAL_SECONDS" in line and "Traceback" not in stderr


async def test_check_reports_a_refused_key_and_an_accepted_one(sim: KlingSimulator, tmp_path: Path) -> None:
    code, _, stderr = await run_cli("check", env=env_for(sim, tmp_path, KLING_API_KEY="wrong"), cwd=tmp_path)
    assert code == 1 and "refused" in stderr and "wrong" not in stderr
    code, stdout, _ = await run_cli("check", env=env_for(sim, tmp_path), cwd=tmp_path)
    assert code == 0 and stdout.startswith("ok:")


@pytest.mark.parametrize(("fault", "reason"), [("credits", "out of credits"), ("concurrency", "busy")])
async def test_a_submit_the_provider_turns_away_ends_the_job_and_says_why(
    sim: KlingSimulator, tmp_path: Path, fault: str, reason: str
) -> None:
    sim.fail_next(fault, on="submit", times=20)
    env = env_for(sim, tmp_path, API_MAX_RETRIES="1")
    code, _, stderr = await run_cli("generate", "--prompt", "turned away", "--out", "o.mp4", env=env, cwd=tmp_path)
    assert code == 1 and reason in stderr and "None" not in stderr
    database = sqlite3.connect(tmp_path / "db.sqlite3")
    assert database.execute("SELECT status, origin FROM jobs").fetchall() == [("failed", "cli")]
    database.close()


async def test_the_bot_never_runs_the_command_lines_jobs(sim: KlingSimulator, tmp_path: Path) -> None:
    sim.hold = True
    store = await Store.open(tmp_path / "shared.sqlite3")
    try:
        async with aiohttp.ClientSession() as session:
            kling = KlingClient(session, root_url=f"{sim.base_url()}/acct-endpoint", api_key=SecretStr(API_KEY))
            cli = JobService(store, kling, origin="cli")
            bot = JobService(store, kling, origin="discord")
            mine = await cli.create(JobRequest("text", "from the command line"))
            assert (await bot.create(JobRequest("text", "from discord"))).status == "submitted"
            sim.hold = False
            sim.finish()
            moved = await bot.poll_once()
            assert [c.job.prompt for c in moved] == ["from discord"]
            assert (await store.get_job(mine.id)).status == "submitted"  # type: ignore[union-attr]
            assert [c.job.id for c in await cli.poll_once()] == [mine.id]
    finally:
        await store.close()

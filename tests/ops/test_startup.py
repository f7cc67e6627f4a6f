"""A newcomer's first start: `.env.example` as shipped, and start-up faults that end in one line, not a traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.provider.simulator import KlingSimulator
from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import KEY, bot_process
from tests.ops.test_discord_process import fakes  # noqa: F401  (the fixture)

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def filled_example(folder: Path, token: str, **lines: str) -> Path:
    """`.env.example` copied to `.env` with only the required lines filled in, as README tells a newcomer."""
    values = {"DISCORD_TOKEN": token, "KLING_API_KEY": KEY, "KLING_ENDPOINT_PATH": "proc", **lines}
    text = EXAMPLE.read_text()
    for name, value in values.items():
        assert f"\n{name}=" in text or text.startswith(f"{name}="), name
        text = text.replace(f"\n{name}=\n", f"\n{name}={value}\n")
    env_file = folder / ".env"
    env_file.write_text(text)
    return env_file


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any of the bot's settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_", "DATABASE_", "CALLBACK_"))}
    return env | extra


def test_the_example_file_with_three_lines_filled_is_valid(tmp_path: Path) -> None:
    settings = load_settings(env_file=str(filled_example(tmp_path, "token-abc")))
    assert settings.discord_guild_id is None
    assert settings.callback_public_url is None and settings.callback_secret is None
    assert settings.discord_token.get_secret_value() == "token-abc"
    assert settings.kling_endpoint_path == "proc"


async def test_run_starts_from_the_example_file_as_shipped(
    fakes: tuple[FakeDiscord, KlingSimulator],  # noqa: F811
    tmp_path: Path,
) -> None:
    fake, sim = fakes
    filled_example(tmp_path, fake.token)
    # Only where the fakes listen differs from a real start; everything else comes from the file.
    env = clean_env(
        KLING_BASE_URL=sim.base_url(), DISCORD_API_BASE_URL=fake.api_base, DISCORD_GATEWAY_URL=fake.gateway_url
    )
    process = await bot_process("run", env=env, cwd=tmp_path)
    try:
        await fake.wait_ready(within=20)
        await fake.slash("video", {"prompt": "first day"}, sub="text")
        await fake_wait_for_video(fake)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err.decode()
    assert (tmp_path / "data" / "bot.sqlite3").is_file()  # DATABASE_PATH's default, from the file


async def fake_wait_for_video(fake: FakeDiscord) -> None:
    await wait_until(lambda: any(m["files"] for t in fake.threads() for m in fake.messages[t["id"]]), within=20)


def database_faults(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Each broken DATABASE_PATH and a word its one-line error must contain."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database" * 100)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    (read_only / "bot.sqlite3").write_bytes(b"")
    return {
        "folder cannot be created": (str(blocker / "sub" / "bot.sqlite3"), "Not a directory"),
        "a directory": (str(tmp_path), "is a directory"),
        "corrupt": (str(corrupt), "not a database"),
        "read-only": (str(read_only / "bot.sqlite3"), "readonly"),
    }


def make_read_only(path: Path) -> None:
    """Read-only even for root (tests run as root in CI): the immutable attribute, else plain file modes."""
    path.chmod(0o444)
    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(path)], check=False).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: cannot make a file read-only")


@pytest.mark.parametrize("fault", ["folder cannot be created", "a directory", "corrupt", "read-only"])
async def test_a_broken_database_path_is_one_line_and_exit_1(
    fakes: tuple[FakeDiscord, KlingSimulator],  # noqa: F811
    tmp_path: Path,
    fault: str,
) -> None:
    fake, sim = fakes
    path, cause = database_faults(tmp_path)[fault]
    if fault == "read-only":
        make_read_only(Path(path))
    env = clean_env(
        DISCORD_TOKEN=fake.token,
        KLING_API_KEY=KEY,
        KLING_ENDPOINT_PATH="proc",
        KLING_BASE_URL=sim.base_url(),
        DISCORD_API_BASE_URL=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        DATABASE_PATH=path,
    )
    process = await bot_process("run", env=env, cwd=tmp_path)
    try:
        _, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if fault == "read-only":
            subprocess.run(["chattr", "-i", path], check=False)  # noqa: ASYNC221 (instant)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert process.returncode == 1, err.decode()
    assert "Traceback" not in err.decode()
    [line] = [line for line in lines if line.startswith("error:")]
    assert "DATABASE_PATH" in line and cause.lower() in line.lower(), line


async def test_a_second_bot_on_the_same_sqlite_file_is_refused(
    fakes: tuple[FakeDiscord, KlingSimulator],  # noqa: F811
    tmp_path: Path,
) -> None:
    fake, sim = fakes
    env = clean_env(
        DISCORD_TOKEN=fake.token,
        KLING_API_KEY=KEY,
        KLING_ENDPOINT_PATH="proc",
        KLING_BASE_URL=sim.base_url(),
        DISCORD_API_BASE_URL=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        DATABASE_PATH=str(tmp_path / "bot.sqlite3"),
    )
    first = await bot_process("run", env=env, cwd=tmp_path)
    try:
        await fake.wait_ready(within=20)
        second = await bot_process("run", env=env, cwd=tmp_path)
        _, err = await asyncio.wait_for(second.communicate(), 20)
        assert second.returncode == 1
        [line] = [line for line in err.decode().splitlines() if line.startswith("error:")]
        assert "another bot process" in line and "Traceback" not in err.decode()
        assert first.returncode is None  # the first one is untouched
        # The tools still work beside the running bot.
        backup = await bot_process("backup", str(tmp_path / "copy.sqlite3"), env=env, cwd=tmp_path)
        _, err = await asyncio.wait_for(backup.communicate(), 20)
        assert backup.returncode == 0, err.decode()
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(first.wait(), 15)
        finally:
            if first.returncode is None:  # a bot slow to stop is not left running past its test
                first.kill()
                await first.wait()

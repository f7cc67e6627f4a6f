"""`python -m bot check` as a process against the fake Discord and the Kling simulator; the permission rules."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.ops.preflight import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    ATTACH_FILES,
    NEEDED_BITS,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    channel_permissions,
    missing_permissions,
)
from bot.provider.sim_variant import GatewayVariant
from bot.provider.simulator import KlingSimulator
from tests.fake_discord import FakeDiscord
from tests.fakes.discord.world import P
from tests.harness import KEY, bot_process
from tests.ports import free_port

COMMANDS = ("video", "quota", "quota-admin", "Animate image")

# --- the permission computation ---------------------------------------------------------------------------------

GUILD, BOT, ROLE_A, ROLE_B = "100", "200", "301", "302"


def everyone(allow: int = 0, deny: int = 0) -> dict[str, Any]:
    return {"id": GUILD, "type": 0, "allow": str(allow), "deny": str(deny)}


def role(role_id: str, allow: int = 0, deny: int = 0) -> dict[str, Any]:
    return {"id": role_id, "type": 0, "allow": str(allow), "deny": str(deny)}


def member(allow: int = 0, deny: int = 0) -> dict[str, Any]:
    return {"id": BOT, "type": 1, "allow": str(allow), "deny": str(deny)}


def perms(
    overwrites: list[dict[str, Any]],
    *,
    base: int = NEEDED_BITS,
    roles: dict[str, int] | None = None,
    member_roles: tuple[str, ...] = (ROLE_A, ROLE_B),
    owner: str = "999",
) -> int:
    return channel_permissions(
        guild_id=GUILD,
        owner_id=owner,
        roles={GUILD: base, ROLE_A: 0, ROLE_B: 0} | (roles or {}),
        member_id=BOT,
        member_roles=member_roles,
        overwrites=overwrites,
    )


def test_base_is_everyone_or_the_members_roles() -> None:
    assert perms([], base=VIEW_CHANNEL, roles={ROLE_A: SEND_MESSAGES}) == VIEW_CHANNEL | SEND_MESSAGES
    # A role the member does not have grants nothing.
    assert perms([], base=VIEW_CHANNEL, roles={"303": SEND_MESSAGES}) == VIEW_CHANNEL


def test_a_role_overwrite_beats_the_everyone_overwrite() -> None:
    assert not perms([everyone(deny=ATTACH_FILES)]) & ATTACH_FILES
    assert perms([everyone(deny=ATTACH_FILES), role(ROLE_A, allow=ATTACH_FILES)]) & ATTACH_FILES
    assert (
        not perms([everyone(allow=ATTACH_FILES), role(ROLE_A, deny=ATTACH_FILES)], base=VIEW_CHANNEL | SEND_MESSAGES)
        & ATTACH_FILES
    )


def test_role_overwrites_are_combined_and_an_allow_wins_among_them() -> None:
    # One role denies, another allows: the roles' allows are applied after all their denials.
    assert perms([role(ROLE_A, deny=ATTACH_FILES), role(ROLE_B, allow=ATTACH_FILES)]) & ATTACH_FILES
    assert perms([role(ROLE_B, allow=ATTACH_FILES), role(ROLE_A, deny=ATTACH_FILES)]) & ATTACH_FILES


def test_the_member_overwrite_comes_last() -> None:
    assert not perms([role(ROLE_A, allow=ATTACH_FILES), member(deny=ATTACH_FILES)]) & ATTACH_FILES
    assert (
        perms([everyone(deny=ATTACH_FILES), role(ROLE_A, deny=ATTACH_FILES), member(allow=ATTACH_FILES)]) & ATTACH_FILES
    )


def test_overwrites_for_others_do_not_apply() -> None:
    others = [role("303", deny=NEEDED_BITS), {"id": "201", "type": 1, "allow": "0", "deny": str(NEEDED_BITS)}]
    assert perms(others) == NEEDED_BITS
    # A member overwrite is matched by type as well as id: a role that happens to share the id is not the member.
    assert perms([{"id": BOT, "type": 0, "allow": "0", "deny": str(ATTACH_FILES)}]) == NEEDED_BITS


def test_administrator_and_the_owner_ignore_overwrites() -> None:
    deny_all = [everyone(deny=ALL_PERMISSIONS), member(deny=ALL_PERMISSIONS)]
    assert perms(deny_all, base=0, roles={ROLE_B: ADMINISTRATOR}) == ALL_PERMISSIONS
    assert perms(deny_all, base=ADMINISTRATOR) == ALL_PERMISSIONS
    assert perms(deny_all, base=0, owner=BOT) == ALL_PERMISSIONS
    # An overwrite cannot grant administrator: it is a guild-level permission.
    assert perms([member(allow=ADMINISTRATOR)], base=VIEW_CHANNEL) == VIEW_CHANNEL | ADMINISTRATOR


def test_implicit_denials_without_view_channel_or_send_messages() -> None:
    assert perms([everyone(deny=VIEW_CHANNEL)]) == 0
    assert missing_permissions(perms([everyone(deny=VIEW_CHANNEL)]))[0] == "View Channel"
    lacking = missing_permissions(perms([member(deny=SEND_MESSAGES)]))
    assert lacking == ["Send Messages", "Embed Links", "Attach Files"]
    assert missing_permissions(NEEDED_BITS) == []


# --- the command as a process -----------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    discord_fake = FakeDiscord()
    await discord_fake.start()
    try:
        yield discord_fake
    finally:
        await discord_fake.close()


@pytest.fixture
async def sim() -> AsyncIterator[KlingSimulator]:
    kling = KlingSimulator(api_key=KEY, endpoint_path="pre", render_seconds=0.0)
    await kling.start()
    try:
        yield kling
    finally:
        await kling.close()


def check_env(fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_", "DATABASE_"))}
    env.update(
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE_URL=fake.api_base,
        KLING_API_KEY=KEY,
        KLING_ENDPOINT_PATH="pre",
        KLING_BASE_URL=sim.base_url(),
        DATABASE_PATH=str(tmp_path / "bot.sqlite3"),
        DISCORD_GUILD_ID=fake.guild_id,
        API_MAX_RETRIES="0",
    )
    env.update(extra)
    return env


async def run(args: tuple[str, ...], env: dict[str, str], cwd: Path) -> tuple[int, list[str], str]:
    """The command's exit code, its stdout lines, and its stderr."""
    process = await bot_process(*args, env=env, cwd=cwd)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines(), err.decode()


async def check(env: dict[str, str], cwd: Path) -> tuple[int, list[str], str]:
    code, lines, err = await run(("check",), env, cwd)
    assert "Traceback" not in err, err
    return code, lines, err


def registered(fake: FakeDiscord) -> None:
    """The commands as `python -m bot sync` leaves them in the server (that sync is run for real below)."""
    fake.commands[fake.guild_id] = [{"name": name, "id": fake.snowflake()} for name in COMMANDS]


def line(lines: list[str], name: str) -> str:
    [found] = [text for text in lines if text[6:].startswith(name)]
    return found


async def test_all_pass(fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path) -> None:
    registered(fake)
    code, lines, err = await check(check_env(fake, sim, tmp_path), tmp_path)
    assert code == 0, (lines, err)
    assert [text[6:].split(":")[0] for text in lines] == [
        "settings", "database", "kling key", "kling id lists", "discord app", 'server "Test server"', "commands",
    ]  # fmt: skip
    assert all(text.startswith("ok:   ") for text in lines), lines
    assert str(tmp_path / "bot.sqlite3") in line(lines, "database")
    assert "video-bot" in line(lines, "discord app") and fake.application_id in line(lines, "discord app")
    assert "all permissions in its 2 text channels" in line(lines, "server")
    output = "\n".join(lines) + err
    assert fake.token not in output and KEY not in output
    assert fake.unexpected == []
    [query] = [r for r in sim.requests if "," in r.query.get("task_ids", "")]
    assert query.query["task_ids"] == "0,1"


async def test_a_channel_overwrite_denying_attach_files_is_named(
    fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path
) -> None:
    registered(fake)
    fake.add_channel("art", 0)
    fake.add_overwrite("art", fake.guild_id, deny=P(attach_files=True).value)  # @everyone may not upload there
    code, lines, _ = await check(check_env(fake, sim, tmp_path), tmp_path)
    assert code == 0
    assert line(lines, "server") == 'warn: server "Test server": lacks Attach Files in 1/3 text channels (#art)'
    # The fake enforces the same overwrite: what check reports is what the bot would meet.
    assert not P(fake.bot_permissions_in(fake.channel_id("art"))).attach_files


async def test_a_role_granting_back_what_everyone_is_denied(
    fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path
) -> None:
    registered(fake)
    bot_role = fake.add_role("video-bot")
    fake.bot_roles.append(bot_role)
    fake.add_overwrite("general", fake.guild_id, deny=P(attach_files=True, embed_links=True).value)
    fake.add_overwrite("general", bot_role, allow=P(attach_files=True).value)
    fake.add_overwrite("mod-log", fake.guild_id, deny=P(embed_links=True).value)
    assert P(fake.bot_permissions_in(fake.general)).attach_files
    code, lines, _ = await check(check_env(fake, sim, tmp_path), tmp_path)
    assert code == 1
    assert (
        line(lines, "server")
        == 'FAIL: server "Test server": lacks Embed Links in 2/2 text channels (#general, #mod-log)'
    )


async def test_bot_permissions_show_as_a_member_overwrite_and_none_anywhere_fails(
    fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path
) -> None:
    registered(fake)
    fake.bot_permissions[fake.log_channel] = P(view_channel=True, send_messages=True, read_message_history=True).value
    code, lines, _ = await check(check_env(fake, sim, tmp_path), tmp_path)
    assert code == 0
    lacking = "Send Messages in Threads, Create Public Threads, Embed Links, Attach Files"
    assert line(lines, "server") == f'warn: server "Test server": lacks {lacking} in 1/2 text channels (#mod-log)'

    fake.bot_permissions[fake.general] = 0
    code, lines, err = await check(check_env(fake, sim, tmp_path), tmp_path)
    assert code == 1 and line(lines, "server").startswith("FAIL: ")
    assert "lacks View Channel, Send Messages" in line(lines, "server") and "(#general)" in line(lines, "server")
    assert 'error: server "Test server"' in err


async def test_commands_not_synced_fail_until_sync_runs(fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path) -> None:
    env = check_env(fake, sim, tmp_path)
    code, lines, err = await check(env, tmp_path)
    assert code == 1
    assert (
        line(lines, "commands") == "FAIL: commands: video, quota, quota-admin not registered: run `python -m bot sync`"
    )
    assert "run `python -m bot sync`" in err
    sync_code, _, sync_err = await run(("sync",), env, tmp_path)
    assert sync_code == 0, sync_err
    code, lines, _ = await check(env, tmp_path)
    assert code == 0 and line(lines, "commands").startswith(
        f"ok:   commands: video, quota, quota-admin registered in server {fake.guild_id}"
    )


async def test_global_commands_count_without_a_guild_id(fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path) -> None:
    env = check_env(fake, sim, tmp_path)
    del env["DISCORD_GUILD_ID"]
    fake.commands[None] = [{"name": "video"}, {"name": "quota"}]
    code, lines, _ = await check(env, tmp_path)
    assert code == 1 and "quota-admin not registered" in line(lines, "commands")
    fake.commands[None].append({"name": "quota-admin"})
    code, lines, _ = await check(env, tmp_path)
    assert code == 0 and line(lines, "commands") == "ok:   commands: video, quota, quota-admin registered globally"
    assert not fake.posted("GET", "/guilds/.*/commands")


async def test_a_wrong_discord_token_fails_without_showing_it(
    fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path
) -> None:
    wrong = "MTIzNDU2Nzg5.wrong-token-value.xyz"
    code, lines, err = await check(check_env(fake, sim, tmp_path, DISCORD_TOKEN=wrong), tmp_path)
    assert code == 1
    assert line(lines, "discord").startswith("FAIL: discord: Discord refused DISCORD_TOKEN")
    assert lines[:4] == [text for text in lines[:4] if text.startswith("ok:")]  # Kling and the database still pass
    assert wrong not in "\n".join(lines) + err and "wrong-token" not in "\n".join(lines) + err


async def test_discord_unreachable_is_a_line(fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/api/v10"
    code, lines, _ = await check(check_env(fake, sim, tmp_path, DISCORD_API_BASE_URL=nowhere), tmp_path)
    assert code == 1
    assert line(lines, "discord").startswith(f"FAIL: discord: cannot reach Discord at {nowhere}: connection failed")


async def test_without_a_token_discord_is_skipped(fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path) -> None:
    code, lines, _ = await check(check_env(fake, sim, tmp_path, DISCORD_TOKEN=""), tmp_path)
    assert code == 0
    assert lines[-1] == "warn: discord: DISCORD_TOKEN is empty: Discord checks skipped" and len(lines) == 5
    assert fake.requests == []


async def test_a_refused_kling_key_fails_with_the_reason(
    fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path
) -> None:
    registered(fake)
    code, lines, err = await check(check_env(fake, sim, tmp_path, KLING_API_KEY="sk-not-the-key"), tmp_path)
    assert code == 1
    assert line(lines, "kling key").startswith("FAIL: kling key: the Kling API at")
    assert "invalid access key" in line(lines, "kling key") and "sk-not-the-key" not in "\n".join(lines) + err
    assert line(lines, "kling id lists") == "warn: kling id lists: not tried (the key check failed)"


async def test_a_database_that_cannot_open_is_a_line(fake: FakeDiscord, sim: KlingSimulator, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    code, lines, _ = await check(
        check_env(fake, sim, tmp_path, DATABASE_PATH=str(tmp_path / "a-file" / "db")), tmp_path
    )
    assert code == 1
    assert line(lines, "database").startswith(f"FAIL: database: cannot open {tmp_path / 'a-file' / 'db'}")


async def test_refused_id_lists_are_a_warning(fake: FakeDiscord, tmp_path: Path) -> None:
    registered(fake)
    kling = KlingSimulator(
        api_key=KEY, endpoint_path="pre", render_seconds=0.0, variant=GatewayVariant(query_lists="refuse")
    )
    await kling.start()
    try:
        code, lines, _ = await check(check_env(fake, kling, tmp_path), tmp_path)
    finally:
        await kling.close()
    assert code == 0
    assert line(lines, "kling key").startswith("ok:")
    warning = line(lines, "kling id lists")
    assert warning.startswith("warn: kling id lists: comma-separated task ids refused (")
    assert warning.endswith("the bot asks fewer ids at a time, down to one")

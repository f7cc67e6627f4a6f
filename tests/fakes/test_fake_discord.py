"""The fake Discord runs real discord.py code: a small bot with app commands, threads, files, buttons and modals."""

from __future__ import annotations

import io
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fake_discord import FakeDiscord, running_bot, running_fake, wait_until

CLIP = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


class PingButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"ping:(?P<n>\d+)"):
    """A persistent button: any message carrying `ping:<n>` works, even one sent before a restart."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label="Ping", custom_id=f"ping:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> PingButton:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.edit_message(content=f"pressed {self.n} by {interaction.user.name}")


class PingModal(discord.ui.Modal, title="Ping"):
    plain: discord.ui.TextInput[PingModal] = discord.ui.TextInput(label="Plain", custom_id="plain")  # in a row
    labelled: discord.ui.Label[PingModal] = discord.ui.Label(
        text="Labelled", component=discord.ui.TextInput(custom_id="labelled")
    )

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        assert isinstance(self.labelled.component, discord.ui.TextInput)
        await interaction.response.send_message(f"{self.plain.value}/{self.labelled.component.value}", ephemeral=True)


class Ping(app_commands.Group):
    def __init__(self, seen: dict[str, Any]) -> None:
        super().__init__(name="ping", description="ping things")
        self.seen = seen

    @app_commands.command(description="defer, answer, open a thread and post a file in it")
    async def thread(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(thinking=True)
        card = await interaction.followup.send("pong", wait=True)
        assert isinstance(interaction.channel, discord.TextChannel | discord.Thread)
        try:
            thread = await interaction.channel.get_partial_message(card.id).create_thread(name="ping thread")
        except discord.HTTPException as exc:
            self.seen["error"] = exc
            await interaction.followup.send(f"no thread: {exc.code}", ephemeral=True)
            return
        await thread.send(
            f"{interaction.user.mention} here is your clip",
            file=discord.File(io.BytesIO(CLIP), "clip.mp4"),
            embed=discord.Embed(title="Clip", description="a ping"),
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=[interaction.user]),
        )
        await interaction.followup.send("done", ephemeral=True)

    @app_commands.command(description="read an attachment")
    async def echo(self, interaction: discord.Interaction[Any], file: discord.Attachment) -> None:
        self.seen["read"] = await file.read()
        self.seen["manage_guild"] = interaction.permissions.manage_guild
        await interaction.response.send_message(f"{file.filename}: {file.size} bytes", ephemeral=True)

    @app_commands.command(description="send a file as a followup")
    async def upload(self, interaction: discord.Interaction[Any], size: int) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        try:
            await interaction.followup.send(file=discord.File(io.BytesIO(bytes(size)), "big.bin"))
        except discord.HTTPException as exc:
            self.seen["error"] = exc
            await interaction.edit_original_response(content=f"too big (limit {interaction.filesize_limit})")

    @app_commands.command(description="show a modal")
    async def modal(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.send_modal(PingModal(custom_id="ping-modal"))


@app_commands.context_menu(name="Quote")
async def quote(interaction: discord.Interaction[Any], message: discord.Message) -> None:
    await interaction.response.send_message(f"> {message.content}")


class PingBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05)
        self.seen: dict[str, Any] = {}
        self.tree.add_command(Ping(self.seen))
        self.tree.add_command(quote)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(PingButton)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake() as started:
        yield started


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[PingBot]:
    async with running_bot(PingBot(), fake) as running:
        yield running


async def test_defer_followup_thread_and_file_as_on_discord(fake: FakeDiscord, bot: PingBot) -> None:
    started = time.perf_counter()
    ping = await fake.send_slash("ping", [], subcommand="thread")
    await wait_until(lambda: len(ping.followups) == 2)
    assert time.perf_counter() - started < 0.5
    assert ping.callbacks == [{"type": 5}] and ping.deferred
    card = ping.original
    assert card is not None and card["content"] == "pong" and ping.followups[0] is card  # replaced the loading
    assert not card["flags"] & 128 and not ping.ephemeral(0) and ping.ephemeral(1)
    assert fake.messages[fake.general] == [card]  # public: in the channel; the ephemeral "done" is not
    [thread] = fake.threads()
    assert thread["id"] == card["id"] and thread["name"] == "ping thread" and thread["owner_id"] == fake.bot_user_id
    assert bot.get_channel(int(thread["id"])) is not None  # THREAD_CREATE reached discord.py's cache
    [clip] = fake.messages[thread["id"]]
    assert clip["files"] == [("clip.mp4", CLIP)] and clip["attachments"][0]["size"] == len(CLIP)
    assert clip["embeds"][0]["title"] == "Clip"
    assert clip["content"] == f"<@{fake.users['alice']['id']}> here is your clip"
    assert clip["allowed_mentions"] == {"parse": [], "users": [int(fake.users["alice"]["id"])], "replied_user": True}
    assert [r.path for r in fake.posted("POST", "/threads$")] == [
        f"/channels/{fake.general}/messages/{card['id']}/threads"
    ]
    assert fake.posted("POST", "/callback$")[0].query == {"with_response": "1"}
    assert fake.unexpected == []


async def test_no_thread_inside_a_thread_or_from_a_forum_message(fake: FakeDiscord, bot: PingBot) -> None:
    ping = await fake.send_slash("ping", [], subcommand="thread", channel="my forum post")
    await wait_until(lambda: len(ping.followups) == 2)
    error = bot.seen["error"]
    assert isinstance(error, discord.HTTPException) and (error.status, error.code) == (400, 50024)
    assert ping.texts() == ["pong", "no thread: 50024"]
    with pytest.raises(discord.HTTPException) as refused:
        await bot.http.start_thread_with_message(fake.forum, fake.forum_post, name="x", auto_archive_duration=60)
    assert refused.value.code == 50024


async def test_forum_post_thread_and_first_message_share_an_id(fake: FakeDiscord, bot: PingBot) -> None:
    forum = bot.get_channel(int(fake.forum))
    assert isinstance(forum, discord.ForumChannel)
    post = await forum.create_thread(name="my clip", content="look", file=discord.File(io.BytesIO(CLIP), "c.mp4"))
    assert post.thread.id == post.message.id and post.thread.parent_id == forum.id
    [message] = fake.messages[str(post.thread.id)]
    assert message["content"] == "look" and message["files"] == [("c.mp4", CLIP)]


async def test_injected_errors_reach_the_bot_as_discord_exceptions(fake: FakeDiscord, bot: PingBot) -> None:
    general = bot.get_channel(int(fake.general))
    assert isinstance(general, discord.TextChannel)
    fake.fail_next("POST", r"/channels/\d+/messages$", 403, 50013, "Missing Permissions")
    with pytest.raises(discord.Forbidden) as forbidden:
        await general.send("hello")
    assert forbidden.value.code == 50013
    fake.fail_next("POST", r"/channels/\d+/messages$", 503)  # not 500: discord.py retries that after 1 s, 3 s...
    with pytest.raises(discord.DiscordServerError):
        await general.send("lost")
    await general.send("finally")
    assert [m["content"] for m in fake.messages[fake.general]] == ["finally"]


async def test_deleted_thread_answers_unknown_channel(fake: FakeDiscord, bot: PingBot) -> None:
    general = bot.get_channel(int(fake.general))
    assert isinstance(general, discord.TextChannel)
    thread = await (await general.send("card")).create_thread(name="t")
    fake.delete_channel(str(thread.id))
    with pytest.raises(discord.NotFound) as gone:
        await thread.send("too late")
    assert gone.value.code == 10003


async def test_enforced_nonce_returns_the_first_message(fake: FakeDiscord, bot: PingBot) -> None:
    general = bot.get_channel(int(fake.general))
    assert isinstance(general, discord.TextChannel)
    first = await general.send("video", nonce="job-1", file=discord.File(io.BytesIO(CLIP), "v.mp4"))
    again = await general.send("video", nonce="job-1", file=discord.File(io.BytesIO(CLIP), "v.mp4"))
    assert again.id == first.id and len(fake.messages[fake.general]) == 1


async def test_uploads_over_the_interaction_limit_answer_413(fake: FakeDiscord, bot: PingBot) -> None:
    limit = 2048
    upload = await fake.send_slash(
        "ping", [{"name": "size", "type": 4, "value": limit + 1}], subcommand="upload", attachment_size_limit=limit
    )
    await wait_until(lambda: upload.content and "too big" in upload.content)
    error = bot.seen["error"]
    assert isinstance(error, discord.HTTPException) and (error.status, error.code) == (413, 40005)
    assert upload.content == "too big (limit 2048)" and upload.ephemeral(0)


async def test_guild_premium_tier_sets_the_upload_limit() -> None:
    async with running_fake(premium_tier=2) as fake, running_bot(PingBot(), fake) as bot:
        guild = bot.get_guild(int(fake.guild_id))
        assert guild is not None and guild.filesize_limit == fake.filesize_limit == 50 * 1024 * 1024
        for user, moderates in [("mod", True), ("alice", False)]:
            file = {"name": "file", "type": 11, "value": fake.add_attachment("a.txt", b"a")}
            await (await fake.send_slash("ping", [file], subcommand="echo", user=user)).wait_response()
            assert bot.seen["manage_guild"] is moderates


async def test_attachment_option_is_read_from_the_fake_cdn(fake: FakeDiscord, bot: PingBot) -> None:
    image = fake.add_attachment("frame.png", b"\x89PNG pretend", "image/png", 64, 48)
    echo = await fake.send_slash("ping", [{"name": "file", "type": 11, "value": image}], subcommand="echo")
    await echo.wait_response()
    assert bot.seen["read"] == b"\x89PNG pretend"
    assert echo.content == "frame.png: 12 bytes" and echo.ephemeral()
    assert fake.messages[fake.general] == []  # ephemeral: not in the channel


async def test_persistent_button_on_an_old_message(fake: FakeDiscord, bot: PingBot) -> None:
    old = fake.post_message(fake.general, fake.bot_user, "press me")
    old["components"] = [{"type": 1, "components": [{"type": 2, "style": 1, "label": "Ping", "custom_id": "ping:7"}]}]
    press = await fake.send_component("ping:7", old["id"], user="bob")
    await press.wait_response()
    assert press.callbacks[0]["type"] == 7
    assert fake.messages[fake.general][0]["content"] == "pressed 7 by bob"


async def test_modal_submit_with_action_rows_and_labels(fake: FakeDiscord, bot: PingBot) -> None:
    shown = await fake.send_slash("ping", [], subcommand="modal")
    await wait_until(lambda: shown.modal is not None)
    assert shown.modal is not None and [c["type"] for c in shown.modal["components"]] == [1, 18]
    submitted = await fake.send_modal_submit("ping-modal", {"plain": "a", "labelled": "b"})
    await submitted.wait_response()
    assert submitted.content == "a/b" and submitted.ephemeral()


async def test_message_context_menu(fake: FakeDiscord, bot: PingBot) -> None:
    said = fake.post_message(fake.general, fake.users["bob"], "hello there")
    quoted = await fake.send_context_menu("Quote", said["id"])
    await quoted.wait_response()
    assert quoted.content == "> hello there" and fake.messages[fake.general][-1] is quoted.original


async def test_gateway_drop_resumes_and_replays_missed_events(fake: FakeDiscord, bot: PingBot) -> None:
    await fake.drop_gateway()
    attachment = fake.add_attachment("a.txt", b"1")
    missed = await fake.send_slash("ping", [{"name": "file", "type": 11, "value": attachment}], subcommand="echo")
    await missed.wait_response()  # sent while the bot was away: replayed after its RESUME
    assert fake.resumes == 1 and missed.content == "a.txt: 1 bytes"
    fake.disconnect_gateway()
    await wait_until(lambda: fake.resumes == 2)
    context = await fake.send_context_menu("Quote", fake.post_message(fake.general, fake.users["bob"], "hi")["id"])
    await context.wait_response()
    assert context.content == "> hi"


async def test_wrong_token_and_unknown_routes(fake: FakeDiscord, bot: PingBot) -> None:
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/voice/regions"))
    assert fake.unexpected == ["GET /voice/regions"]
    with pytest.raises(discord.LoginFailure):
        async with running_bot(PingBot(), fake, token="not-the-token"):
            pass

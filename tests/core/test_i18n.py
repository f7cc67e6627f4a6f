"""Languages: every message and command text has its Simplified Chinese translation, with the same fields, within
Discord's limits; a zh-CN member sees Chinese from the command's answer to the video's buttons, an en-US one English."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import discord
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from bot.core.credits import QuotaRefused
from bot.core.i18n import CHINESE, ENGLISH, LOCALES_DIR, SUPPORTED, catalog, english, translated
from cogs.messages import refusal_text
from cogs.translator import CatalogTranslator
from tests.conftest import make_image
from tests.fake_discord import wait_until
from tests.harness import Harness, harness

ROOT = Path(__file__).resolve().parents[2]
# The same keywords as docs/operating.md's `pybabel extract -F babel.cfg -k tr:2 -k english -k locale_str -k _`.
KEYWORDS: dict[str, Any] = {"tr": (2,), "english": None, "locale_str": None, "_": None}
FIELD = re.compile(r"\{(\w*)[^{}]*\}")
NO_DESCRIPTION = "…"  # discord.py's description of a parameter nobody described


def code_messages() -> set[str]:
    """Every message id in bot/ and cogs/, found as a translator's `pybabel extract` finds them."""
    with (ROOT / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)
    found = extract_from_dir(ROOT, method_map, options_map, keywords=KEYWORDS)
    return {message if isinstance(message, str) else message[0] for _, _, message, _, _ in found}


def catalog_entries(lang: str) -> dict[str, str]:
    """A language's catalog as written, empty and fuzzy translations included."""
    with (LOCALES_DIR / lang.replace("-", "_") / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return {str(m.id): "" if m.fuzzy else str(m.string) for m in read_po(handle) if m.id}


TRANSLATED = [lang for lang in SUPPORTED if lang != ENGLISH]


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_message_has_its_translation_and_the_catalog_nothing_else(lang: str) -> None:
    used, entries = code_messages(), catalog_entries(lang)
    assert len(used) > 200  # the extraction really ran over the code
    assert sorted(used - set(catalog(lang))) == [], f"messages with no {lang} translation"
    assert sorted(set(entries) - used) == [], "catalog messages the code no longer uses"


@pytest.mark.parametrize("lang", TRANSLATED)
def test_each_translation_keeps_the_fields_of_its_english(lang: str) -> None:
    for msgid, text in catalog_entries(lang).items():
        assert sorted(FIELD.findall(text)) == sorted(FIELD.findall(msgid)), msgid
        assert text.count("`") == msgid.count("`"), msgid  # code spans (ids, commands) survive


def test_core_texts_are_translated_where_they_are_shown() -> None:
    """A core text (a refusal, a stored reason) is found again by its filled-in English, fields translated too."""
    failed = english("The video service failed: {reason}", reason="rate limit")
    assert translated(CHINESE, failed) == "视频服务生成失败：rate limit"
    assert translated(ENGLISH, failed) == failed
    assert translated(CHINESE, "cancelled") == "已取消"
    assert translated(CHINESE, "something only the provider says") == "something only the provider says"
    needs = (
        "This video needs {cost} credits (about {cost_seconds} s of 720p) and you have {left} credits (about "
        "{left_seconds} s of 720p) left. A shorter or 720p video costs less."
    )
    refused = QuotaRefused(english(needs, cost="4", cost_seconds=5, left="1.5", left_seconds=1))
    assert refusal_text(refused, "zh-CN") == (
        "这个视频需要 4 额度（约 5 秒 720p 视频），你还剩 1.5 额度（约 1 秒 720p 视频）。更短或 720p 的视频花费更少。"
    )
    blocked = english("You are blocked from making videos in this server: {reason}.", reason="no reason given")
    assert translated(CHINESE, blocked) == "你已被禁止在此服务器生成视频：未说明原因。"
    # A provider's words inside a reason are shown as they are, even where they look like a short message.
    provider = english("The video service failed: {reason}", reason="limit 5 exceeded per day")
    assert translated(CHINESE, provider) == "视频服务生成失败：limit 5 exceeded per day"
    assert refusal_text(refused, "en-US") == refused.reason


# --- Discord's limits on command texts ----------------------------------------------------------------------


def valid_name(name: str) -> bool:
    """Discord's `^[-_\\p{L}\\p{N}\\p{sc=Deva}\\p{sc=Thai}]{1,32}$`, and lowercase where a letter has cases."""

    def allowed(char: str) -> bool:
        category = unicodedata.category(char)
        return char in "-_" or category[0] in "LN" or "\u0900" <= char <= "\u097f" or "\u0e00" <= char <= "\u0e7f"

    return 1 <= len(name) <= 32 and all(allowed(c) for c in name) and name == name.lower()


def texts_of(payload: dict[str, Any], *, chat_input: bool) -> Iterator[tuple[str, str, str]]:
    """(what, locale, text) for every name and description in a command's payload, each language."""
    for key in ("name", "description"):
        if key == "description" and not chat_input:
            continue  # a context menu has no description
        yield key, ENGLISH, payload[key]
        for locale, text in (payload.get(f"{key}_localizations") or {}).items():
            yield key, locale, text
    for option in payload.get("options", []):
        yield from texts_of(option, chat_input=True)
        for choice in option.get("choices", []):
            yield "choice", ENGLISH, choice["name"]
            for locale, text in (choice.get("name_localizations") or {}).items():
                yield "choice", locale, text


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


async def test_command_texts_keep_discords_limits_in_every_language(world: Harness) -> None:
    async with world.running() as bot:
        translator = CatalogTranslator()
        commands = bot.tree.get_commands()
        payloads = [(c, await c.get_translated_payload(bot.tree, translator)) for c in commands]
    assert {c.name for c, _ in payloads} >= {"video", "quota", "quota-admin", "Animate image"}
    checked = set()
    for command, payload in payloads:
        chat_input = isinstance(command, discord.app_commands.Command | discord.app_commands.Group)
        for what, locale, text in texts_of(payload, chat_input=chat_input):
            checked.add((what, locale))
            if what == "name" and chat_input:
                assert valid_name(text), (locale, text)
            elif what == "name":
                assert 1 <= len(text) <= 32, (locale, text)
            else:
                assert 1 <= len(text) <= 100, (what, locale, text)
            if locale == "zh-CN":
                assert re.search(r"[\u4e00-\u9fff]", text) or not re.search("[a-z]{3}", text), text
    assert {("name", "zh-CN"), ("description", "zh-CN"), ("choice", "zh-CN")} <= checked
    # Every text a command shows has its zh-CN localization (none falls back to English silently).
    for _, payload in payloads:
        assert sorted(untranslated(payload)) == [], payload["name"]
        assert_unique_names(payload)
    for locale in ("en-US", "zh-CN"):  # top-level command names are unique per type too
        names = [(p["type"], (p.get("name_localizations") or {}).get(locale, p["name"])) for _, p in payloads]
        assert len(names) == len(set(names)), locale


def assert_unique_names(node: dict[str, Any]) -> None:
    """Discord refuses two options (or subcommands) of one command with the same name, in any language."""
    options = node.get("options", [])
    for locale in ("en-US", "zh-CN"):
        names = [(o.get("name_localizations") or {}).get(locale, o["name"]) for o in options]
        assert len(names) == len(set(names)), (node["name"], locale, names)
    for option in options:
        assert_unique_names(option)


def untranslated(node: dict[str, Any]) -> Iterator[str]:
    """The names, descriptions and choices of a command's payload (options within) with no zh-CN localization."""
    if "zh-CN" not in (node.get("name_localizations") or {}):
        yield node["name"]
    described = node.get("description") not in (None, "", NO_DESCRIPTION)
    if described and "zh-CN" not in (node.get("description_localizations") or {}):
        yield node["description"]
    for choice in node.get("choices", []):
        if "zh-CN" not in (choice.get("name_localizations") or {}):
            yield choice["name"]
    for option in node.get("options", []):
        yield from untranslated(option)


# --- a zh-CN member and an en-US member in one run ----------------------------------------------------------


def chinese(text: str) -> bool:
    return re.search(r"[\u4e00-\u9fff]", text) is not None


async def test_a_chinese_member_sees_chinese_and_an_english_one_english(world: Harness) -> None:
    fake = world.discord
    fake.locales["bob"] = "zh-CN"
    fake.preferred_locale = "zh-CN"  # the server's language: its log channel is written in it
    async with world.running():
        await world.resources.credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
        asked = await fake.slash("video", {"prompt": "一只狐狸在雪地里", "duration": 5}, sub="text", user="bob")
        await wait_until(lambda: asked.texts())
        answered = await fake.slash("video", {"prompt": "a red fox in snow", "duration": 5}, sub="text")
        await wait_until(lambda: answered.texts())
        await wait_until(lambda: len([m for m in fake.messages[fake.log_channel] if "⏹️" in m["content"]]) == 2)
        jobs = {j.user_id: j for j in await world.resources.store.jobs_in(("delivered",))}
        history = await fake.slash("video", sub="history", user="bob")
        await wait_until(lambda: history.texts() and chinese(history.texts()[-1]))
    bob, alice = jobs[int(fake.users["bob"]["id"])], jobs[int(fake.users["alice"]["id"])]
    assert (bob.locale, alice.locale) == ("zh-CN", "en-US")
    page = history.messages[-1]
    assert page["content"].startswith("**你的视频**（第 1 页，共 1 页）\n• `")
    assert [b["label"] for b in page["components"][0]["components"]] == ["上一页", "下一页"]

    # The command's first answer.
    assert asked.texts()[0].startswith(f"你的视频 `{bob.id[:8]}` 正在生成（5 秒 · 720p · 16:9 · 文生视频）")
    assert answered.texts()[0].startswith(f"Your video `{alice.id[:8]}` is on its way (5 s · 720p · 16:9 · from text)")

    def post(job: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        card = fake.find_message(str(job.message_id))
        status, video = fake.messages[str(job.thread_id)]
        return card, status, video

    # The card, the status in the thread, the delivered video's post and its buttons.
    card, status, video = post(bob)
    fields = {f["name"]: f["value"] for f in card["embeds"][0]["fields"]}
    assert card["embeds"][0]["title"] == f"视频任务 {bob.id[:8]}"
    assert fields["状态"] == "已完成" and fields["选项"] == "5 秒 · 720p · 16:9 · 文生视频"
    assert "[已发送到这里](" in fields["视频"] and fields["发起人"] == f"<@{bob.user_id}>"
    assert chinese(status["content"]) and "视频将发送在下方" in status["content"]
    assert video["content"] == f"<@{bob.user_id}> 你的视频已生成。"
    embed = {f["name"]: f["value"] for f in video["embeds"][0]["fields"]}
    assert video["embeds"][0]["title"] == f"视频 {bob.id[:8]}" and set(embed) >= {"时长", "分辨率", "消耗额度"}
    assert [b["label"] for b in video["components"][0]["components"]] == ["重新生成 · 4 额度", "编辑 · 4 额度", "删除"]
    assert [b["label"] for b in video["components"][1]["components"]] == ["续写 · 4 额度"]

    card, status, video = post(alice)
    fields = {f["name"]: f["value"] for f in card["embeds"][0]["fields"]}
    assert card["embeds"][0]["title"] == f"Video job {alice.id[:8]}" and fields["State"] == "done"
    assert not chinese(status["content"]) and "The video will be posted below." in status["content"]
    assert video["content"] == f"<@{alice.user_id}> your video is ready."
    labels = [b["label"] for b in video["components"][0]["components"]]
    assert labels == ["Re-roll · 4 credits", "Edit · 4 credits", "Delete"]

    # The log channel speaks the server's language, whoever started the job.
    log = [m["content"] for m in fake.messages[fake.log_channel]]
    assert any(line.startswith(f"▶️ <@{alice.user_id}> 在 ") and alice.id[:8] in line for line in log)
    assert any(f"的视频 `{bob.id[:8]}` 在 " in line and line.endswith(" 已发送") for line in log)


async def test_refusals_forms_and_alerts_reach_a_chinese_member_in_chinese(world: Harness) -> None:
    """The core's texts (an image's refusal, the service's outage, the operator alert) and the Animate form."""
    fake = world.discord
    fake.locales["bob"] = "zh-CN"
    fake.preferred_locale = "zh-CN"
    async with world.running():
        await world.resources.credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
        tiny = fake.add_attachment("tiny.png", make_image(100, 100), "image/png", 100, 100)
        rejected = await fake.slash("video", {"image": tiny}, sub="image", user="bob")
        await wait_until(lambda: any(chinese(t) for t in rejected.texts()))

        posted = fake.post_message(
            fake.general,
            fake.users["alice"],
            "look",
            attachments=[fake.add_attachment("cat.png", make_image(500, 500))],
        )
        shown = await fake.message_menu("Animate image", posted, user="bob")
        await wait_until(lambda: shown.modal is not None)

        world.sim.fail_next("credits", on="submit")
        first = await fake.slash("video", {"prompt": "one"}, sub="text")
        await wait_until(lambda: first.texts() and "on its way" in first.texts()[0])
        refused = await fake.slash("video", {"prompt": "两只猫"}, sub="text", user="bob")
        await wait_until(lambda: any("排队" in t for t in refused.texts()))
        await wait_until(lambda: any(m["content"].startswith("⚠️") for m in fake.messages[fake.log_channel]))
    assert rejected.texts()[-1] == "图片尺寸为 100x100，每条边至少需要 300 像素。没有提交任务，也没有扣除任何额度。"
    assert shown.modal is not None and shown.modal["title"] == "图片生成视频"
    labels = [row["components"][0]["label"] for row in shown.modal["components"]]
    assert labels == ["提示词（可选）", "时长（秒，3-15）", "分辨率（720p 或 1080p）", "声音（on 或 off；留空：默认）"]
    offer = next(m for m in refused.messages if "排队" in m["content"])
    assert offer["content"].startswith(
        "视频服务暂不可用：机器人的账户需要运维人员处理。没有扣除任何额度，请稍后再试。或者"
    )
    assert [b["label"] for b in offer["components"][0]["components"]] == ["排队，等服务恢复后生成"]
    [alert] = [m["content"] for m in fake.messages[fake.log_channel] if m["content"].startswith("⚠️")]
    assert alert.startswith("⚠️ 视频服务拒绝了机器人的账户：视频服务账户余额不足或已被暂停，需要机器人运维人员充值。（")

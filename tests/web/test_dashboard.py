"""The moderators' dashboard through a real browser: the real bot serves it (WEB_PORT), the fake Discord plays the
OAuth2 login and the bot's view of each member, and every change is checked where it lands (the database, `/quota`
in Discord, the review's thread)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from tests.fake_discord import FakeDiscord, wait_until
from tests.harness import Harness, harness, private_answer
from tests.ports import free_port
from tests.web.browser import chromium

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        port = free_port()
        running.settings_overrides |= {
            "web_port": port,
            "web_host": "127.0.0.1",
            "web_public_url": f"http://127.0.0.1:{port}",
            "discord_client_secret": running.discord.client_secret,
            "web_session_secret": "a-session-secret-for-tests-0123456789",
        }
        running.discord.add_channel("video-review", 0)
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as running:
        yield running


def web(world: Harness) -> str:
    return str(world.settings().web_public_url)


def member_id(fake: FakeDiscord, name: str) -> str:
    return str(fake.users[name]["id"])


async def logged_in(
    browser: Browser, world: Harness, name: str, *, javascript: bool = True
) -> tuple[BrowserContext, Page]:
    """A browser of its own logged in as `name` through Discord's consent page; on the list of servers."""
    world.discord.login_as = name
    context = await browser.new_context(java_script_enabled=javascript)
    page = await context.new_page()
    await page.goto(web(world) + "/")
    await page.click("text=Log in with Discord")
    await page.wait_for_selector("header .who")  # logged in: the list of servers
    return context, page


async def server_page(page: Page, world: Harness) -> Any:
    return await page.goto(f"{web(world)}/servers/{world.discord.guild_id}")


async def moderators_page(browser: Browser, world: Harness) -> Page:
    """The server's page, in a browser of its own logged in as the moderator."""
    _, page = await logged_in(browser, world, "mod")
    await server_page(page, world)
    return page


async def post_form(page: Page, world: Harness, action: str, form: dict[str, str]) -> int:
    """POST a server page's form from this browser's session, as a script of its own would; the answer's status."""
    url = f"{web(world)}/servers/{world.discord.guild_id}/{action}"
    return (await page.request.post(url, form=form, max_redirects=0)).status


async def chart_loaded(page: Page) -> None:
    """The chart: an SVG drawn by matplotlib on the server, loaded by the browser."""
    await page.wait_for_function(
        "(() => { const i = document.querySelector('img.chart'); return i.complete && i.naturalWidth > 0 })()"
    )


async def make_video(world: Harness) -> Any:
    await world.discord.slash("video", {"prompt": "a <@&1> lighthouse at dusk", "duration": 5}, sub="text")


async def test_a_moderator_sees_the_chart_and_members_and_a_limit_set_there_holds_in_discord(
    world: Harness, browser: Browser
) -> None:
    fake = world.discord
    async with world.running():
        await make_video(world)
        await world.job_in("delivered")
        _, page = await logged_in(browser, world, "mod")
        await page.click("text=Test server")
        await page.wait_for_selector("#usage")
        await chart_loaded(page)
        top = await page.inner_text("#top-members")
        assert "alice\t1\t5\t4\t" in top  # one job, 5 s, 4 credits (5 s of 720p at 0.8)
        await page.fill("#limit-member", member_id(fake, "alice"))
        await page.fill("#limit-credits", "7.5")
        await page.click("#quotas form[action$=member-limit] button")
        await page.wait_for_selector("#notice")
        row = await page.inner_text(f"#member-quotas tr[data-member='{member_id(fake, 'alice')}']")
        assert "7.5" in row and "their own limit" in row
        assert "Limit: 7.5 credits" in await private_answer(await fake.slash("quota", {}))
        [entry] = await world.resources.credits.audit_entries(int(fake.guild_id))
        assert (entry.action, entry.moderator_id, entry.target_id, entry.source) == (
            "set", int(member_id(fake, "mod")), int(member_id(fake, "alice")), "web"
        )  # fmt: skip
        assert await page.inner_text("#audit-log td.source") == "web"
        assert "\tmod\tset\talice\t" in await page.inner_text("#audit-log")  # by name, not by id
        await chart_loaded(page)  # again: the page was loaded anew after Save
        shot = ROOT / "docs" / "dashboard.png" if os.environ.get("UPDATE_SCREENSHOT") else None
        await page.screenshot(path=shot or world.database.parent / "dashboard.png", full_page=True)
        # The change is posted in the server's log channel as a slash command's is.
        await world.resources.credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
        await page.fill("#grant-member", member_id(fake, "alice"))
        await page.fill("#grant-amount", "2")
        await page.fill("#grant-reason", "a <@&1> contest prize")
        await page.click("#quotas form[action$=grant] button")
        await wait_until(lambda: fake.messages[fake.log_channel])
        assert "**grant**" in fake.messages[fake.log_channel][-1]["content"]
        assert fake.messages[fake.log_channel][-1]["allowed_mentions"] == {"parse": []}


async def test_a_member_without_manage_server_has_nothing_to_manage_and_the_server_answers_403(
    world: Harness, browser: Browser
) -> None:
    fake = world.discord
    async with world.running():
        _, page = await logged_in(browser, world, "alice")
        assert await page.is_visible("#nothing")
        csrf = await page.input_value("input[name=csrf]")  # her own session's token: valid, but not a moderator
        response = await server_page(page, world)
        assert response is not None and response.status == 403
        form = {"csrf": csrf, "member": member_id(fake, "alice"), "limit": "1000"}
        assert await post_form(page, world, "member-limit", form) == 403
        assert await world.resources.credits.member_overrides(int(fake.guild_id)) == {}
        assert await world.resources.credits.audit_entries(int(fake.guild_id)) == []


async def test_manage_server_is_asked_of_discord_again_on_every_request(world: Harness, browser: Browser) -> None:
    fake = world.discord
    fake.add_user("helper", roles=[fake.moderator_role])
    async with world.running():
        _, page = await logged_in(browser, world, "helper")
        response = await server_page(page, world)
        assert response is not None and response.status == 200
        csrf = await page.input_value("#quotas input[name=csrf]")
        fake.member_roles["helper"] = []  # the role is taken away after the login
        response = await server_page(page, world)
        assert response is not None and response.status == 403
        form = {"csrf": csrf, "member": member_id(fake, "alice"), "reason": "spam"}
        assert await post_form(page, world, "block", form) == 403
        assert await world.resources.credits.member_overrides(int(fake.guild_id)) == {}


async def test_a_form_without_its_sessions_csrf_token_changes_nothing(world: Harness, browser: Browser) -> None:
    fake = world.discord
    async with world.running():
        _, page = await logged_in(browser, world, "mod")
        _, other = await logged_in(browser, world, "mod")  # the same moderator in another browser
        other_token = await other.input_value("input[name=csrf]")
        url = f"{web(world)}/servers/{fake.guild_id}/block"
        form = {"member": member_id(fake, "alice"), "reason": "forged"}
        for forged in ({}, {"csrf": other_token}, {"csrf": "0" * 64}):
            posted = await page.request.post(url, form=form | forged, max_redirects=0)
            assert posted.status == 403
        assert await world.resources.credits.member_overrides(int(fake.guild_id)) == {}
        # The same form with this session's own token does block: the refusals above were the token's.
        own = await page.input_value("input[name=csrf]")
        posted = await page.request.post(url, form=form | {"csrf": own}, max_redirects=0)
        assert posted.status == 303
        blocked = await world.resources.credits.member_overrides(int(fake.guild_id))
        assert blocked[int(member_id(fake, "alice"))].blocked_reason == "forged"


async def test_approve_in_the_page_posts_the_video_in_its_thread(world: Harness, browser: Browser) -> None:
    fake = world.discord
    async with world.running():
        job = await video_waiting_for_review(world)
        page = await moderators_page(browser, world)
        video = f"#review .pending[data-job='{job.id}'] video"
        assert await page.get_attribute(video, "src") == job.video_url
        await page.wait_for_function(f'document.querySelector("{video}").readyState >= 1')  # its metadata loaded
        await page.click(f"#review .pending[data-job='{job.id}'] form[action$=approve] button")
        await page.wait_for_selector("#notice")
        await world.job_in("delivered")
        [thread] = fake.threads()
        assert any("your video is ready" in m["content"] for m in fake.messages[thread["id"]])
        [decision, _] = await world.resources.credits.audit_entries(int(fake.guild_id))
        assert (decision.action, decision.source) == ("approve", "web")
        review = fake.channel_id("video-review")
        await wait_until(lambda: "Approved by" in fake.messages[review][0]["content"])
        assert not fake.messages[review][0].get("components")
        assert "No video is waiting for review." in await page.inner_text("#review")


async def test_reject_in_the_page_tells_the_member_and_marks_the_review_message(
    world: Harness, browser: Browser
) -> None:
    fake = world.discord
    async with world.running():
        await world.resources.credits.set_log_channel(int(fake.guild_id), 1, int(fake.log_channel))
        job = await video_waiting_for_review(world)
        page = await moderators_page(browser, world)
        pending = f"#review .pending[data-job='{job.id}']"
        await page.fill(f"{pending} input[name=reason]", "off-topic <@&1>")
        await page.click(f"{pending} form[action$=reject] button")
        await page.wait_for_selector("#notice")
        [thread] = fake.threads()
        await wait_until(lambda: any("not approved" in m["content"] for m in fake.messages[thread["id"]]))
        told = next(m for m in fake.messages[thread["id"]] if "not approved" in m["content"])
        assert "off-topic" in told["content"] and not told.get("attachments")
        # The review message shows the decision and its buttons are gone, as after the Reject button.
        review = fake.channel_id("video-review")
        await wait_until(lambda: "Rejected by" in fake.messages[review][0]["content"])
        assert len(fake.messages[review]) == 1 and not fake.messages[review][0].get("components")
        await wait_until(lambda: any("rejected video" in m["content"] for m in fake.messages[fake.log_channel]))
        assert (await world.job_in("rejected")).review_reason == "off-topic <@&1>"
        assert all(m.get("allowed_mentions", {}).get("parse") == [] for m in fake.messages[fake.log_channel])


async def _review_on(world: Harness) -> bool:
    settings = await world.resources.credits.settings(int(world.discord.guild_id))
    return settings.review_channel_id is not None


async def video_waiting_for_review(world: Harness) -> Any:
    """A finished video held in the server's review channel (the moderator turns review on first)."""
    fake = world.discord
    review = fake.channel_id("video-review")
    await fake.slash("quota-admin", {"channel": review}, sub="review", user="mod", types={"channel": 7})
    await wait_until(lambda: _review_on(world))
    await make_video(world)
    await wait_until(lambda: fake.messages[review])
    return await world.job_in("succeeded")


async def test_the_page_is_in_chinese_for_a_zh_cn_member(world: Harness, browser: Browser) -> None:
    world.discord.locales["mod"] = "zh-CN"
    async with world.running():
        page = await moderators_page(browser, world)
        assert await page.get_attribute("html", "lang") == "zh-CN"
        assert await page.inner_text("header button") == "退出登录"
        assert await page.inner_text("#quotas h2") == "成员额度"


async def test_log_out_ends_the_session(world: Harness, browser: Browser) -> None:
    async with world.running():
        context, page = await logged_in(browser, world, "mod")
        cookies = await context.cookies()
        await page.click("header button")
        await page.wait_for_selector("text=Log in with Discord")
        replay = await browser.new_context()
        await replay.add_cookies(cookies)  # the old cookie, kept by someone
        response = await replay.request.get(f"{web(world)}/servers/{world.discord.guild_id}", max_redirects=0)
        assert response.status == 302 and response.headers["location"] == "/"


async def test_approve_posted_twice_at_once_posts_the_video_once(world: Harness, browser: Browser) -> None:
    fake = world.discord
    async with world.running():
        job = await video_waiting_for_review(world)
        page = await moderators_page(browser, world)
        form = {"csrf": await page.input_value("#review input[name=csrf]"), "job": job.id}
        statuses = await asyncio.gather(*(post_form(page, world, "approve", form) for _ in range(2)))
        assert sorted(statuses) == [303, 400]  # one approval; the other is told the video was already decided
        await world.job_in("delivered")
        await world.more_ticks(5)
        [thread] = fake.threads()
        assert sum("your video is ready" in m["content"] for m in fake.messages[thread["id"]]) == 1
        entries = await world.resources.credits.audit_entries(int(fake.guild_id))
        assert [e.action for e in entries].count("approve") == 1


async def test_a_grant_form_sent_twice_at_once_grants_once(world: Harness, browser: Browser) -> None:
    fake = world.discord
    guild_id, alice = int(fake.guild_id), member_id(fake, "alice")
    async with world.running():
        page = await moderators_page(browser, world)
        grant = "form[action$='/grant']"
        form = {
            "csrf": await page.input_value(f"{grant} input[name=csrf]"),
            "once": await page.input_value(f"{grant} input[name=once]"),
            "member": alice,
            "amount": "2",
            "reason": "a double click",
        }
        statuses = await asyncio.gather(*(post_form(page, world, "grant", form) for _ in range(2)))
        assert statuses == [303, 303]  # both told it is done: it is, once
        usage = await world.resources.store.usage(guild_id, int(alice), 0)
        entries = await world.resources.credits.audit_entries(guild_id)
        assert usage.granted == 2000 and [e.action for e in entries].count("grant") == 1
        # The page shown again has a new form: a second grant on purpose is made.
        await server_page(page, world)
        form["once"] = await page.input_value(f"{grant} input[name=once]")
        assert await post_form(page, world, "grant", form) == 303
        assert (await world.resources.store.usage(guild_id, int(alice), 0)).granted == 4000


async def save(page: Page, form: str) -> None:
    """Press a form's button and wait for the page shown after it (its notice, or the form's error)."""
    await page.click(f"form[action$='/{form}'] button")
    await page.wait_for_selector("#notice, #form-error")


async def test_the_servers_rules_set_in_the_page_hold_in_discord(world: Harness, browser: Browser) -> None:
    fake = world.discord
    guild_id = int(fake.guild_id)
    vip = fake.add_role("vip")
    fake.member_roles["alice"] = [vip]
    async with world.running():
        page = await moderators_page(browser, world)
        await page.select_option("#role-role", vip)
        await page.fill("#role-limit", "12")
        await save(page, "role-limit")
        assert "vip\t12" in await page.inner_text("#role-limits")
        alice = await private_answer(await fake.slash("quota", {}))
        assert "Limit: 12 credits" in alice and f"from your role <@&{vip}>" in alice
        await page.fill("#default-limit", "30")
        await page.select_option("#default-period", "month")
        await save(page, "default")
        await page.fill("#caps-member", "2")
        await page.fill("#caps-server", "9")
        await save(page, "caps")
        await page.fill("#confirm-above", "6")
        await save(page, "confirm-above")
        settings = await world.resources.credits.settings(guild_id)
        assert (settings.default_limit, settings.period) == (30_000, "month")
        assert (settings.member_in_flight, settings.server_in_flight, settings.confirm_above) == (2, 9, 6_000)
        bob = await private_answer(await fake.slash("quota", {}, user="bob"))
        assert "month period" in bob and "Limit: 30 credits" in bob
        # The forms show what is set now.
        assert await page.input_value("#default-limit") == "30"
        assert await page.input_value("#caps-server") == "9"
        assert await page.input_value("#confirm-above") == "6"
        # The role's own setting removed: alice is back on the default.
        await page.select_option("#role-role", vip)
        await page.check("#role-remove")
        await save(page, "role-limit")
        assert await world.resources.credits.role_limits(guild_id) == {}
        assert "Limit: 30 credits" in await private_answer(await fake.slash("quota", {}))
        # A value out of range is told on the page and changes nothing.
        await page.fill("#caps-member", "0")
        await save(page, "caps")
        assert "out of range" in await page.inner_text("#form-error")
        assert (await world.resources.credits.settings(guild_id)).member_in_flight == 2
        entries = await world.resources.credits.audit_entries(guild_id)
        assert len(entries) == 5 and {entry.source for entry in entries} == {"web"}


async def test_a_limit_cleared_and_a_block_lifted_in_the_page_hold_in_discord(world: Harness, browser: Browser) -> None:
    fake = world.discord
    guild_id, alice = int(fake.guild_id), member_id(fake, "alice")
    async with world.running():
        page = await moderators_page(browser, world)
        await page.fill("#limit-member", alice)
        await page.fill("#limit-credits", "3")
        await save(page, "member-limit")
        await page.fill("#limit-member", alice)
        await page.fill("#limit-credits", "")  # empty: her own limit cleared
        await save(page, "member-limit")
        assert await page.query_selector(f"#member-quotas tr[data-member='{alice}']") is None  # no use, no setting
        assert "Limit: 3 credits" not in await private_answer(await fake.slash("quota", {}))
        await page.fill("#block-member", alice)
        await page.fill("#block-reason", "spam")
        await save(page, "block")
        assert "may not make videos" in await private_answer(await fake.slash("quota", {}))
        await page.fill("#unblock-member", alice)
        await save(page, "unblock")
        assert "may not make videos" not in await private_answer(await fake.slash("quota", {}))
        await make_video(world)
        await world.job_in("delivered")  # she makes videos again
        actions = [entry.action for entry in await world.resources.credits.audit_entries(guild_id)]
        assert sorted(actions) == sorted(["set", "clear", "block", "unblock"])


async def test_the_jobs_filter_by_member_and_state_and_the_audit_log_pages(world: Harness, browser: Browser) -> None:
    fake = world.discord
    guild_id, mod = int(fake.guild_id), int(member_id(fake, "mod"))
    async with world.running():
        await make_video(world)
        await world.job_in("delivered")
        await fake.slash("video", {"prompt": "bob's kite, fail-render", "duration": 5}, sub="text", user="bob")
        bobs = await world.job_in("failed")
        for limit in range(1, 23):  # 22 changes: a page of 20 and an older one
            await world.resources.credits.set_member_limit(guild_id, mod, int(member_id(fake, "alice")), limit * 1000)
        page = await moderators_page(browser, world)
        assert len(await page.query_selector_all("#job-list tr[data-job]")) == 2
        await page.fill("#jobs-member", member_id(fake, "bob"))
        await page.click("#jobs form button")
        await page.wait_for_url("**member=*")
        listed = await page.query_selector_all("#job-list tr[data-job]")
        assert [await row.get_attribute("data-job") for row in listed] == [bobs.id]
        await page.fill("#jobs-member", "")
        await page.select_option("#jobs-state", "delivered")
        await page.click("#jobs form button")
        await page.wait_for_url("**state=delivered*")
        [row] = await page.query_selector_all("#job-list tr[data-job]")
        assert await row.get_attribute("data-job") != bobs.id
        link = await page.get_attribute("#job-list tr[data-job] a", "href")
        assert link is not None and link.startswith(f"https://discord.com/channels/{fake.guild_id}/")
        # A private video is listed, but not what it shows.
        secret = "a private <@&1> diary entry"
        await fake.slash("video", {"prompt": secret, "duration": 5, "private": True}, sub="text", user="bob")

        async def delivered_privately() -> bool:
            return any(job.private for job in await world.resources.store.jobs_in(("delivered",)))

        await wait_until(delivered_privately)
        await server_page(page, world)
        listed = await page.inner_text("#job-list")
        assert "🔒 private" in listed and "diary" not in listed
        # The audit log: the newest 20 first, the two oldest on the next page.
        assert len(await page.query_selector_all("#audit-log tr")) == 1 + 20
        await page.click("#audit a:text('Older')")
        await page.wait_for_url("**audit=1*")
        rows = await page.query_selector_all("#audit-log tr")
        assert len(rows) == 1 + 2 and "limit 1\t" in await rows[-1].inner_text()
        assert await page.is_visible("#audit a:text('Newer')")


async def test_the_pages_work_without_javascript_and_label_every_field(world: Harness, browser: Browser) -> None:
    fake = world.discord
    async with world.running():
        await video_waiting_for_review(world)  # the review's forms are on the page too
        _, page = await logged_in(browser, world, "mod", javascript=False)
        await page.click("text=Test server")
        await page.wait_for_selector("#usage")
        fields = await page.query_selector_all("main input:not([type=hidden]), main select")
        assert len(fields) > 15
        for field in fields:
            field_id = await field.get_attribute("id")
            assert field_id and await page.query_selector(f"label[for='{field_id}']"), field_id
        said = {(await button.inner_text()).strip() for button in await page.query_selector_all("button")}
        assert said == {"Save", "Grant", "Block", "Unblock", "Approve", "Reject", "Show", "Log out"}
        await page.fill("#limit-member", member_id(fake, "alice"))
        await page.fill("#limit-credits", "4")
        await save(page, "member-limit")
        overrides = await world.resources.credits.member_overrides(int(fake.guild_id))
        assert overrides[int(member_id(fake, "alice"))].override == 4000

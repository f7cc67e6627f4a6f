"""How jobs look in Discord: the job card, the status line, the result embed. Member text never pings."""

from __future__ import annotations

import discord

from bot.core.credits import QuotaRefused
from bot.core.i18n import english, tr, translated
from bot.core.model import Job
from bot.core.options import option
from bot.core.quota import format_credits

COLOURS = {
    "failed": discord.Colour.red(),
    "undeliverable": discord.Colour.orange(),
    "delivered": discord.Colour.green(),
    "succeeded": discord.Colour.green(),
}
STATE_WORDS = {  # English message ids: `state_word` says them in the reader's language
    "reserved": english("sending to the video service"),
    "queued": english("waiting for a free slot"),
    "submitted": english("submitted, waiting to start"),
    "processing": english("rendering"),
    "succeeded": english("done, posting the video"),
    "delivered": english("done"),
    "failed": english("failed"),
    "cancelled": english("cancelled"),
    "undeliverable": english("done, but the video could not be posted"),
    "rejected": english("rejected by a moderator"),
}


def state_word(locale: object, status: str) -> str:
    """A job's state in words, in `locale`'s language."""
    return tr(locale, STATE_WORDS[status]) if status in STATE_WORDS else status


def job_state(job: Job, locale: object) -> str:
    """A job's state for its member; a finished video waiting for a moderator says so."""
    if job.status == "succeeded" and job.review_state == "pending":
        return tr(locale, "done, waiting for a moderator's review")
    return state_word(locale, job.status)


SOUND_NOT_OFFERED = english("this video service offers no sound control: your choice was not sent, charged as silent")

MESSAGE_LIMIT = 2000  # Discord refuses longer message content


def fit_lines(header: str, lines: list[str], limit: int = MESSAGE_LIMIT, locale: object = None) -> str:
    """A header and as many whole lines as fit in one message, then how many were left out."""
    text = header
    for shown, line in enumerate(lines):
        more = "\n" + tr(locale, "… and {count} more", count=len(lines) - shown)
        if len(text) + 1 + len(line) + len(more) > limit:
            return text + more
        text += "\n" + line
    return text


def clock(seconds: float) -> str:
    """Seconds as m:ss (or h:mm:ss)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def option_label(locale: object, name: str, value: object) -> str:
    """One option's value as the options line shows it (its declared label, in the member's language)."""
    opt = option(name)
    if value in opt.labels:
        return tr(locale, opt.labels[value])
    return tr(locale, opt.label, **{opt.label_field: value}) if opt.label else str(value)


def options_line(job: Job, locale: object = None) -> str:
    """`5 s · 720p · 16:9 · text` in one short line (in the job's language unless told)."""
    locale = locale or job.locale
    parts = [option_label(locale, name, value) for name, value in job.options.values if value is not None]
    parts.append(tr(locale, "from an image") if job.kind == "image" else tr(locale, "from text"))
    return " · ".join(parts)


def quote_prompt(prompt: str, limit: int = 1000, locale: object = None) -> str:
    """The prompt shown literally: markdown escaped, cut to fit an embed."""
    text = discord.utils.escape_markdown(prompt.strip()) or tr(locale, "*(no prompt)*")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def thread_name(job: Job) -> str:
    """A thread title: the prompt on one line, cut to 90 characters (Discord allows 100)."""
    one_line = " ".join(job.prompt.split())
    return one_line[:90] if one_line else tr(job.locale, "Video from an image")


def refusal_text(refused: QuotaRefused, locale: object = None) -> str:
    """A quota refusal for Discord: the reason, and when the credits come back as a relative timestamp."""
    reason = translated(locale, refused.reason)
    if not refused.about_credits:
        return reason
    if refused.reset_at is None:
        return tr(locale, "{reason} Your credits do not reset.", reason=reason)
    return tr(
        locale, "{reason} Your credits reset {when}.", reason=reason, when=f"<t:{int(refused.reset_at.timestamp())}:R>"
    )


def frame_filename(mime: str) -> str:
    """The file name of a first frame posted on a job's card."""
    return "first-frame.png" if mime == "image/png" else "first-frame.jpg"


def job_card(job: Job, *, note: str | None = None, frame: str | None = None) -> discord.Embed:
    """The public message a job's thread hangs on: who, prompt, options, state (and the first frame, attached)."""
    locale = job.locale
    embed = discord.Embed(
        title=tr(locale, "Video job {id}", id=job.id[:8]),
        description=quote_prompt(job.prompt, locale=locale),
        colour=COLOURS.get(job.status, discord.Colour.blurple()),
    )
    if job.user_id:
        embed.add_field(name=tr(locale, "Requested by"), value=f"<@{job.user_id}>")
    embed.add_field(name=tr(locale, "Options"), value=options_line(job))
    embed.add_field(name=tr(locale, "State"), value=state_word(locale, job.status))
    if job.status == "delivered" and job.result_message_id and job.guild_id and job.channel_id:
        where = job.thread_id or job.channel_id  # a deleted thread's video went to the channel (thread_id cleared)
        link = f"https://discord.com/channels/{job.guild_id}/{where}/{job.result_message_id}"
        embed.add_field(name=tr(locale, "Video"), value=tr(locale, "[Posted here]({link})", link=link))
    if job.image_source:
        embed.add_field(
            name=tr(locale, "First frame"), value=discord.utils.escape_markdown(job.image_source[:200]), inline=False
        )
    # The first post attaches the frame; later edits show it by its URL (the card's copy or the member's image).
    image = f"attachment://{frame}" if frame else job.frame_url if job.kind == "image" else None
    if image:
        embed.set_image(url=image)
    if note:
        embed.set_footer(text=note)
    return embed


def status_line(
    job: Job, now: float, estimate: float | None, queue_position: int | None = None, *, late: bool = False
) -> str:
    """The thread's status message: the state, when it started (a live Discord timestamp) and an estimate."""
    locale = job.locale
    state = state_word(locale, job.status)
    started = f"<t:{int(job.submitted_at or job.created_at)}:R>"
    if late:
        return tr(
            locale,
            "🐢 **Late**: started {started}, far longer than usual. The video service still has it, so I keep asking; "
            "your credits stay held until it arrives (or are given back if it never does), and the video will be "
            "posted below.",
            started=started,
        )
    if job.status == "reserved" and job.uncertain_since is not None:
        return tr(
            locale,
            "⏳ **Checking**: the video service did not confirm this job when it was sent. I am checking whether it "
            "has it before sending it again, so it is never made (or charged) twice.",
        )
    if job.status in ("submitted", "processing"):
        # A Discord timestamp counts by itself: no edit is needed to keep it current.
        if estimate:
            return tr(
                locale,
                "⏳ **{state}**: started {started}, usually done in about {estimate}. The video will be posted below.",
                state=state.capitalize(),
                started=started,
                estimate=clock(estimate),
            )
        return tr(
            locale,
            "⏳ **{state}**: started {started}. The video will be posted below.",
            state=state.capitalize(),
            started=started,
        )
    if job.status == "queued" and queue_position is not None:
        return tr(locale, "🕒 **Queued**: number {position} in line.", position=queue_position)
    if job.status in ("succeeded", "delivered"):
        taken = (job.finished_at or now) - (job.submitted_at or job.created_at)
        return tr(locale, "✅ **Done** in {taken}.", taken=clock(taken))
    if job.status == "failed":
        return tr(locale, "❌ **Failed**: {reason}", reason=job_error(job))
    if job.status == "undeliverable":
        return tr(locale, "⚠️ **Done, but the video could not be posted** here. Its link: {url}", url=job.video_url)
    return f"**{state.capitalize()}**."


def job_error(job: Job, locale: object = None) -> str:
    """Why a job failed (stored in English by the core), in the job's language unless told."""
    locale = locale or job.locale
    return translated(locale, job.error) if job.error else tr(locale, "no reason given")


def result_embed(job: Job) -> discord.Embed:
    """The embed under a finished video: prompt, duration, resolution, credits used, time taken."""
    locale = job.locale
    embed = discord.Embed(
        title=tr(locale, "Video {id}", id=job.id[:8]),
        description=quote_prompt(job.prompt, locale=locale),
        colour=discord.Colour.green(),
    )
    length = f"{job.video_seconds:.1f}" if job.video_seconds else f"{job.duration}"
    embed.add_field(name=tr(locale, "Duration"), value=tr(locale, "{seconds} s", seconds=length))
    embed.add_field(name=tr(locale, "Resolution"), value=job.resolution)
    credits = job.cost_billed if job.cost_billed is not None else job.cost_estimate
    embed.add_field(name=tr(locale, "Credits used"), value=format_credits(credits))
    if job.finished_at and job.submitted_at:
        embed.add_field(name=tr(locale, "Time taken"), value=clock(job.finished_at - job.submitted_at))
    if job.sound_dropped:  # also for a job that waited in the queue, sent after its first answer
        embed.add_field(name=tr(locale, "Sound"), value=tr(locale, SOUND_NOT_OFFERED), inline=False)
    return embed


def failure_text(job: Job, *, mention: bool = True) -> str:
    """What the member reads when their job failed; their credits were given back. `mention`: their choice."""
    if mention:
        return tr(
            job.locale,
            "{mention} your video could not be made: {reason} Your credits were not used.",
            mention=f"<@{job.user_id}>",
            reason=job_error(job),
        )
    return tr(job.locale, "Your video could not be made: {reason} Your credits were not used.", reason=job_error(job))


def cancel_text(job: Job, locale: object = None) -> str:
    """The truthful answer to /video cancel: freed now, or not sent again while the service is asked."""
    if job.status == "cancelled":
        return tr(locale, "Cancelled `{id}`; it was never sent, and its credits are free again.", id=job.id[:8])
    return tr(
        locale,
        "`{id}` was sent, but the video service never confirmed it. I will not send it again. If the service turns "
        "out to have it after all, the video is still delivered (and charged); otherwise its credits are freed "
        "within a few minutes.",
        id=job.id[:8],
    )


THREAD_GONE_NOTE = english("This job's thread was deleted, so the video is posted here.")


def video_link_text(job: Job, mention: str, reason: str, note: str = "") -> str:
    """The message that carries a video's link when its file cannot be posted; `reason` says why (both `reason` and
    `note` are English message ids, said here in the job's language)."""
    text = tr(
        job.locale,
        "{mention} your video is ready, but {reason}, so here is its link: {url}\n"
        "The link expires (within a day or so): download the video soon.",
        mention=mention,
        reason=translated(job.locale, reason),
        url=job.video_url,
    )
    return f"{text}\n{tr(job.locale, note)}" if note else text


def too_large_reason(limit: int) -> str:
    """Why a video goes as a link: it exceeds the upload limit."""
    return english("it is larger than this server's {size} MB upload limit", size=f"{limit / 1024 / 1024:.0f}")


NO_ATTACH_REASON = english("I am not allowed to attach files here")


def jump_link(guild_id: int | None, *ids: int) -> str:
    """A link to a channel or message: in its server, or in the bot's DM (the personal scope, 0, has no server)."""
    return "/".join(["https://discord.com/channels", str(guild_id or "@me"), *map(str, ids)])

"""How jobs look in Discord: the job card, the status line, the result embed. Member text never pings."""

from __future__ import annotations

import discord

from bot.credits import QuotaRefused
from bot.model import Job
from bot.quota import format_credits

COLOURS = {
    "failed": discord.Colour.red(),
    "undeliverable": discord.Colour.orange(),
    "delivered": discord.Colour.green(),
    "succeeded": discord.Colour.green(),
}
STATE_WORDS = {
    "reserved": "sending to the video service",
    "queued": "waiting for a free slot",
    "submitted": "submitted, waiting to start",
    "processing": "rendering",
    "succeeded": "done, posting the video",
    "delivered": "done",
    "failed": "failed",
    "cancelled": "cancelled",
    "undeliverable": "done, but the video could not be posted",
}


MESSAGE_LIMIT = 2000  # Discord refuses longer message content


def fit_lines(header: str, lines: list[str], limit: int = MESSAGE_LIMIT) -> str:
    """A header and as many whole lines as fit in one message, then how many were left out."""
    text = header
    for shown, line in enumerate(lines):
        more = f"\n… and {len(lines) - shown} more"
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


def options_line(job: Job) -> str:
    """`5 s · 720p · 16:9 · text` in one short line."""
    parts = [f"{job.duration} s", job.resolution]
    if job.aspect_ratio:
        parts.append(job.aspect_ratio)
    parts.append("from an image" if job.kind == "image" else "from text")
    return " · ".join(parts)


def quote_prompt(prompt: str, limit: int = 1000) -> str:
    """The prompt shown literally: markdown escaped, cut to fit an embed."""
    text = discord.utils.escape_markdown(prompt.strip()) or "*(no prompt)*"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def thread_name(job: Job) -> str:
    """A thread title: the prompt on one line, cut to 90 characters (Discord allows 100)."""
    one_line = " ".join(job.prompt.split())
    return one_line[:90] if one_line else "Video from an image"


def refusal_text(refused: QuotaRefused) -> str:
    """A quota refusal for Discord: the reason, and when the credits come back as a relative timestamp."""
    if not refused.about_credits:
        return refused.reason
    if refused.reset_at is None:
        return f"{refused.reason} Your credits do not reset."
    return f"{refused.reason} Your credits reset <t:{int(refused.reset_at.timestamp())}:R>."


def frame_filename(mime: str) -> str:
    """The file name of a first frame posted on a job's card."""
    return "first-frame.png" if mime == "image/png" else "first-frame.jpg"


def job_card(job: Job, *, note: str | None = None, frame: str | None = None) -> discord.Embed:
    """The public message a job's thread hangs on: who, prompt, options, state (and the first frame, attached)."""
    embed = discord.Embed(
        title=f"Video job {job.id[:8]}",
        description=quote_prompt(job.prompt),
        colour=COLOURS.get(job.status, discord.Colour.blurple()),
    )
    if job.user_id:
        embed.add_field(name="Requested by", value=f"<@{job.user_id}>")
    embed.add_field(name="Options", value=options_line(job))
    embed.add_field(name="State", value=STATE_WORDS.get(job.status, job.status))
    if job.status == "delivered" and job.result_message_id and job.guild_id and job.channel_id:
        where = job.thread_id or job.channel_id  # a deleted thread's video went to the channel (thread_id cleared)
        link = f"https://discord.com/channels/{job.guild_id}/{where}/{job.result_message_id}"
        embed.add_field(name="Video", value=f"[Posted here]({link})")
    if job.image_source:
        embed.add_field(name="First frame", value=discord.utils.escape_markdown(job.image_source[:200]), inline=False)
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
    state = STATE_WORDS.get(job.status, job.status)
    if late:
        return (
            f"🐢 **Late**: started <t:{int(job.submitted_at or job.created_at)}:R>, far longer than usual. The video "
            "service still has it, so I keep asking; your credits stay held until it arrives (or are given back if "
            "it never does), and the video will be posted below."
        )
    if job.status == "reserved" and job.uncertain_since is not None:
        return (
            "⏳ **Checking**: the video service did not confirm this job when it was sent. I am checking whether it "
            "has it before sending it again, so it is never made (or charged) twice."
        )
    if job.status in ("submitted", "processing"):
        # A Discord timestamp counts by itself: no edit is needed to keep it current.
        line = f"⏳ **{state.capitalize()}**: started <t:{int(job.submitted_at or job.created_at)}:R>"
        if estimate:
            line += f", usually done in about {clock(estimate)}"
        return line + ". The video will be posted below."
    if job.status == "queued" and queue_position is not None:
        return f"🕒 **Queued**: number {queue_position} in line."
    if job.status in ("succeeded", "delivered"):
        taken = (job.finished_at or now) - (job.submitted_at or job.created_at)
        return f"✅ **Done** in {clock(taken)}."
    if job.status == "failed":
        return f"❌ **Failed**: {job.error or 'no reason given'}"
    if job.status == "undeliverable":
        return f"⚠️ **Done, but the video could not be posted** here. Its link: {job.video_url}"
    return f"**{state.capitalize()}**."


def result_embed(job: Job) -> discord.Embed:
    """The embed under a finished video: prompt, duration, resolution, credits used, time taken."""
    embed = discord.Embed(
        title=f"Video {job.id[:8]}", description=quote_prompt(job.prompt), colour=discord.Colour.green()
    )
    seconds = f"{job.video_seconds:.1f} s" if job.video_seconds else f"{job.duration} s"
    embed.add_field(name="Duration", value=seconds)
    embed.add_field(name="Resolution", value=job.resolution)
    credits = job.cost_billed if job.cost_billed is not None else job.cost_estimate
    embed.add_field(name="Credits used", value=format_credits(credits))
    if job.finished_at and job.submitted_at:
        embed.add_field(name="Time taken", value=clock(job.finished_at - job.submitted_at))
    return embed


def failure_text(job: Job, *, mention: bool = True) -> str:
    """What the member reads when their job failed; their credits were given back. `mention`: their choice."""
    text = f"your video could not be made: {job.error or 'no reason given'} Your credits were not used."
    return f"<@{job.user_id}> {text}" if mention else text[0].upper() + text[1:]


def cancel_text(job: Job) -> str:
    """The truthful answer to /video cancel: freed now, or not sent again while the service is asked."""
    if job.status == "cancelled":
        return f"Cancelled `{job.id[:8]}`; it was never sent, and its credits are free again."
    return (
        f"`{job.id[:8]}` was sent, but the video service never confirmed it. I will not send it again. If the service "
        "turns out to have it after all, the video is still delivered (and charged); otherwise its credits are freed "
        "within a few minutes."
    )


THREAD_GONE_NOTE = "This job's thread was deleted, so the video is posted here."


def video_link_text(job: Job, mention: str, reason: str, note: str = "") -> str:
    """The message that carries a video's link when its file cannot be posted; `reason` says why."""
    text = (
        f"{mention} your video is ready, but {reason}, so here is its link: {job.video_url}\n"
        "The link expires (within a day or so): download the video soon."
    )
    return f"{text}\n{note}" if note else text


def too_large_reason(limit: int) -> str:
    """Why a video goes as a link: it exceeds the upload limit."""
    return f"it is larger than this server's {limit / 1024 / 1024:.0f} MB upload limit"


NO_ATTACH_REASON = "I am not allowed to attach files here"

"""Buttons under finished videos; their custom ids carry the job id, so they work after a restart."""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol, runtime_checkable

import discord

from bot.app import refused_here, reply_ephemeral
from bot.core.i18n import tr
from bot.core.quota import format_credits

log = logging.getLogger(__name__)

JOB_ID = r"(?P<job_id>[0-9a-f]{16})"


def is_moderator(interaction: discord.Interaction[Any]) -> bool:
    """Manage Messages or Manage Server in this channel."""
    permissions = interaction.permissions
    return permissions.manage_messages or permissions.manage_guild


@runtime_checkable
class VideoActions(Protocol):
    """What the buttons need from the buttons cog, `cogs/buttons.py` (found by what it does, not by a name and a
    cast: this module is below the cogs that use its items)."""

    async def reroll(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...

    async def edit_video(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...

    async def delete_video(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...

    async def continue_video(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...

    async def join_chain(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...


def _buttons_cog(interaction: discord.Interaction[Any]) -> VideoActions:
    cog = next((c for c in interaction.client.cogs.values() if isinstance(c, VideoActions)), None)
    if cog is None:
        raise RuntimeError("the buttons cog is not loaded")
    return cog


class ServerOnly:
    """Mixed into the buttons of a server's messages (review): a press from outside a server (a forged payload, a
    future install type) is told why and reaches no callback, so it reserves and sends nothing. The buttons under a
    video are checked by the buttons cog instead: a private server video's come to its member's DM."""

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        refusal = refused_here(interaction)
        if refusal is None:
            return True
        await reply_ephemeral(interaction, tr(interaction.locale, refusal))
        return False


class RerollButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=f"video:reroll:{JOB_ID}"):
    """Make the same video again, as a new job of whoever presses it."""

    def __init__(self, job_id: str, label: str = "Re-roll") -> None:
        super().__init__(
            discord.ui.Button(
                label=label, emoji="🎲", style=discord.ButtonStyle.primary, custom_id=f"video:reroll:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RerollButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _buttons_cog(interaction).reroll(interaction, self.job_id)


class EditButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=f"video:edit:{JOB_ID}"):
    """Make the video again with an edited prompt (a form prefilled with it), as a new job of whoever presses it."""

    def __init__(self, job_id: str, label: str = "Edit") -> None:
        super().__init__(
            discord.ui.Button(
                label=label, emoji="✏️", style=discord.ButtonStyle.secondary, custom_id=f"video:edit:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> EditButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _buttons_cog(interaction).edit_video(interaction, self.job_id)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=f"video:delete:{JOB_ID}"):
    """Remove the video message: the requester or a moderator only."""

    def __init__(self, job_id: str, locale: object = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=tr(locale, "Delete"),
                emoji="🗑️",
                style=discord.ButtonStyle.danger,
                custom_id=f"video:delete:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> DeleteButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _buttons_cog(interaction).delete_video(interaction, self.job_id)


class ContinueButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=f"video:continue:{JOB_ID}"):
    """Make the next segment: a new video that starts from this one's last frame, in the same thread."""

    def __init__(self, job_id: str, label: str = "Continue") -> None:
        super().__init__(
            discord.ui.Button(
                label=label, emoji="⏭️", style=discord.ButtonStyle.secondary, custom_id=f"video:continue:{job_id}", row=1
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ContinueButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _buttons_cog(interaction).continue_video(interaction, self.job_id)


class JoinButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=f"video:join:{JOB_ID}"):
    """Post the chain that ends with this segment as one video (free)."""

    def __init__(self, job_id: str, label: str = "Join") -> None:
        super().__init__(
            discord.ui.Button(
                label=label, emoji="🔗", style=discord.ButtonStyle.secondary, custom_id=f"video:join:{job_id}", row=1
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JoinButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _buttons_cog(interaction).join_chain(interaction, self.job_id)


def result_view(
    job_id: str,
    *,
    reroll_cost: int | None = None,
    continue_cost: int | None = None,
    chained: bool = False,
    locale: object = None,
) -> discord.ui.View:
    """The persistent buttons under a finished video: Re-roll, Edit and Delete, then Continue (and Join, for a segment
    that continues another). Costs (milli-credits) are shown on the buttons that charge."""
    view = discord.ui.View(timeout=None)
    reroll = tr(locale, "Re-roll")
    if reroll_cost is not None:
        reroll = tr(locale, "Re-roll · {credits} credits", credits=format_credits(reroll_cost))
    view.add_item(RerollButton(job_id, reroll))
    edit = tr(locale, "Edit")
    if reroll_cost is not None:  # the original's options, as Re-roll's; the form may change them
        edit = tr(locale, "Edit · {credits} credits", credits=format_credits(reroll_cost))
    view.add_item(EditButton(job_id, edit))
    view.add_item(DeleteButton(job_id, locale))
    more = tr(locale, "Continue")
    if continue_cost is not None:
        more = tr(locale, "Continue · {credits} credits", credits=format_credits(continue_cost))
    view.add_item(ContinueButton(job_id, more))
    if chained:
        view.add_item(JoinButton(job_id, tr(locale, "Join")))
    return view


class PagedView(discord.ui.View):
    """Previous and Next under an ephemeral list; `render(page)` returns the text and whether more follow."""

    def __init__(self, owner_id: int, render: Any, page: int = 0, locale: object = None) -> None:
        super().__init__(timeout=600)
        self.owner_id = owner_id
        self.render = render
        self.page = page
        self.previous.label = tr(locale, "Previous")
        self.next.label = tr(locale, "Next")

    async def show(self, interaction: discord.Interaction[Any]) -> None:
        """Send the first page as a private followup."""
        text, more = await self.render(self.page)
        self._set_buttons(more)
        await interaction.followup.send(
            text, view=self, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    def _set_buttons(self, more: bool) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = not more

    async def _turn(self, interaction: discord.Interaction[Any], step: int) -> None:
        self.page = max(0, self.page + step)
        text, more = await self.render(self.page)
        self._set_buttons(more)
        await interaction.response.edit_message(content=text, view=self)

    @discord.ui.button(label="Previous", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        await self._turn(interaction, -1)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        await self._turn(interaction, +1)

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return interaction.user.id == self.owner_id


@runtime_checkable
class ReviewActions(Protocol):
    """What the review buttons need from the moderators' cog."""

    async def approve(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...

    async def reject(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...


def _review_cog(interaction: discord.Interaction[Any]) -> ReviewActions:
    cog = next((c for c in interaction.client.cogs.values() if isinstance(c, ReviewActions)), None)
    if cog is None:
        raise RuntimeError("the review cog is not loaded")
    return cog


class ApproveButton(ServerOnly, discord.ui.DynamicItem[discord.ui.Button[Any]], template=f"review:approve:{JOB_ID}"):
    """A moderator lets a finished video go to its thread (the job id is in the custom id: works after restarts)."""

    def __init__(self, job_id: str, locale: object = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=tr(locale, "Approve"),
                emoji="✅",
                style=discord.ButtonStyle.success,
                custom_id=f"review:approve:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ApproveButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _review_cog(interaction).approve(interaction, self.job_id)


class RejectButton(ServerOnly, discord.ui.DynamicItem[discord.ui.Button[Any]], template=f"review:reject:{JOB_ID}"):
    """A moderator refuses a finished video, giving the member a reason."""

    def __init__(self, job_id: str, locale: object = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=tr(locale, "Reject"),
                emoji="⛔",
                style=discord.ButtonStyle.danger,
                custom_id=f"review:reject:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RejectButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _review_cog(interaction).reject(interaction, self.job_id)


REVIEW_BUTTONS = (ApproveButton, RejectButton)


def review_view(job_id: str, locale: object = None) -> discord.ui.View:
    """The persistent buttons under a video waiting in the review channel (in the server's language)."""
    view = discord.ui.View(timeout=None)
    view.add_item(ApproveButton(job_id, locale))
    view.add_item(RejectButton(job_id, locale))
    return view

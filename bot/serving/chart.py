"""The usage chart: a server's credits per day as bars, drawn by matplotlib (the `web` extra) for `/quota-admin
usage` (PNG) and the dashboard (PNG or SVG).

matplotlib is imported on the first chart, not with the bot: without the extra the bot runs and `draw_usage_chart`
answers None (logged once). Drawing is CPU work (tens of ms), so `draw_usage_chart` runs it on a thread; a lock keeps
two drawings from sharing matplotlib's global settings at once.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal

from bot.core.i18n import CHINESE, language, tr
from bot.core.model import DayCredits

log = logging.getLogger(__name__)

ChartFormat = Literal["png", "svg"]
# Debian's fonts-noto-cjk; any of them draws Simplified Chinese, the first found is used.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Serif CJK SC")
_drawing = threading.Lock()


class ChartUnavailable(Exception):
    """matplotlib (the `web` extra) is not installed: no chart can be drawn."""


def _matplotlib() -> tuple[Any, Any, Any, Any]:
    """matplotlib's figure, Agg canvas (no display), font manager and settings context, imported on first use."""
    try:
        from matplotlib import font_manager, rc_context
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as missing:
        raise ChartUnavailable(f"matplotlib is not installed (pip install 'kling-video-bot[web]'): {missing}") from None
    return Figure, FigureCanvasAgg, font_manager, rc_context


@functools.cache
def cjk_family() -> str | None:
    """The installed CJK font's family name, or None. matplotlib's font cache may predate the font's install, so
    the system's font files are added to it when the family is not yet known."""
    font_manager = _matplotlib()[2]
    known = {font.name for font in font_manager.fontManager.ttflist}
    if not known.intersection(CJK_FAMILIES):
        for path in font_manager.findSystemFonts():
            if "CJK" in path:
                font_manager.fontManager.addfont(path)
        known = {font.name for font in font_manager.fontManager.ttflist}
    return next((family for family in CJK_FAMILIES if family in known), None)


def render_usage_chart(days: Sequence[DayCredits], *, fmt: ChartFormat = "png", locale: str = "en-US") -> bytes:
    """The chart of `days` (oldest first) as PNG or SVG bytes, its words in `locale`'s language. Raises
    ChartUnavailable without matplotlib."""
    figure_class, canvas_class, _, rc_context = _matplotlib()
    fonts = ["DejaVu Sans"]
    if language(locale) == CHINESE:
        family = cjk_family()
        if family is None:
            log.warning("no CJK font (Debian: fonts-noto-cjk): the chart's Chinese words will be missing glyphs")
        else:
            fonts = [family, "DejaVu Sans"]
    # SVG keeps its words as text (a page can find and scale them); the PNG draws them with the fonts above.
    settings = {"font.family": fonts, "svg.fonttype": "none", "svg.hashsalt": "usage-chart"}
    labels = [f"{d.day:%m-%d}" for d in days]
    with _drawing, rc_context(settings):
        figure = figure_class(figsize=(9, 3.6), dpi=100, layout="constrained")
        canvas_class(figure)
        axes = figure.add_subplot()
        axes.bar(range(len(days)), [d.credits for d in days], color="#5865f2")
        axes.set_xticks(range(len(days)), labels, rotation=60, fontsize=7)
        axes.set_title(tr(locale, "Credits per day, last {days} days", days=len(days)))
        axes.set_xlabel(tr(locale, "Day (UTC)"))
        axes.set_ylabel(tr(locale, "Credits"))
        axes.spines[["top", "right"]].set_visible(False)
        out = io.BytesIO()
        figure.savefig(out, format=fmt)
    return out.getvalue()


@functools.cache
def _log_unavailable(reason: str) -> None:
    log.warning("usage charts are off: %s", reason)


async def draw_usage_chart(
    days: Sequence[DayCredits], *, fmt: ChartFormat = "png", locale: str = "en-US"
) -> bytes | None:
    """`render_usage_chart` on a thread, off the event loop; None without matplotlib (said once in the log)."""
    try:
        return await asyncio.to_thread(render_usage_chart, days, fmt=fmt, locale=locale)
    except ChartUnavailable as missing:
        _log_unavailable(str(missing))
        return None

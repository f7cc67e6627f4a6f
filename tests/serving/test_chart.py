"""The usage chart: real PNG and SVG bytes from matplotlib, its words in the member's language (Chinese drawn with
a CJK font, no missing glyph), off the event loop, and no chart (said once in the log) without matplotlib."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
import threading
import warnings
from datetime import date, timedelta

import pytest

from bot.core.i18n import tr
from bot.core.model import DayCredits
from bot.serving import chart

DAYS = [DayCredits(date(2027, 1, 1) + timedelta(days=n), float(n % 5) * 1.5) for n in range(30)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MATPLOTLIB_MODULES = ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.font_manager")


def png_size(data: bytes) -> tuple[int, int]:
    """A PNG's width and height, from its IHDR chunk."""
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_png_is_a_picture_of_the_chart_size() -> None:
    data = chart.render_usage_chart(DAYS, fmt="png", locale="en-US")
    assert png_size(data) == (900, 360)
    assert len(data) > 5_000  # bars and words, not an empty canvas


def test_svg_holds_every_day_label_and_the_title() -> None:
    svg = chart.render_usage_chart(DAYS, fmt="svg", locale="en-US").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for day in DAYS:
        assert f"{day.day:%m-%d}" in svg
    assert "Credits per day, last 30 days" in svg


def test_chinese_title_renders_with_a_cjk_font_and_no_missing_glyph() -> None:
    if chart.cjk_family() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no CJK font installed: .ci/run installs fonts-noto-cjk")
        pytest.skip("no CJK font installed (Debian: fonts-noto-cjk)")
    title = tr("zh-CN", "Credits per day, last {days} days", days=30)
    assert title != "Credits per day, last 30 days"  # the catalog has it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = chart.render_usage_chart(DAYS, fmt="png", locale="zh-CN")
        svg = chart.render_usage_chart(DAYS, fmt="svg", locale="zh-CN").decode()
    assert png_size(data) == (900, 360)
    assert title in svg
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert missing == []


def test_missing_glyphs_are_noticed_without_a_cjk_font(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: with the CJK font taken away, the same drawing warns of missing glyphs."""
    monkeypatch.setattr(chart, "cjk_family", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chart.render_usage_chart(DAYS, fmt="png", locale="zh-CN")
    assert any("missing from" in str(w.message) for w in caught)


async def test_drawing_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    render = chart.render_usage_chart

    def watched(*args: object, **kwargs: object) -> bytes:
        threads.append(threading.current_thread())
        return render(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chart, "render_usage_chart", watched)
    data = await chart.draw_usage_chart(DAYS, fmt="png", locale="en-US")
    assert data is not None and data[:8] == PNG_MAGIC
    assert threads and threads[0] is not threading.main_thread()


async def test_without_matplotlib_there_is_no_chart_and_the_log_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in MATPLOTLIB_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # `import` of it raises ImportError, as when not installed
    chart._log_unavailable.cache_clear()
    with pytest.raises(chart.ChartUnavailable):
        chart.render_usage_chart(DAYS)
    with caplog.at_level(logging.WARNING, logger="bot.serving.chart"):
        answers = await asyncio.gather(*(chart.draw_usage_chart(DAYS) for _ in range(3)))
    assert answers == [None, None, None]
    said = [r.getMessage() for r in caplog.records if "usage charts are off" in r.getMessage()]
    assert len(said) == 1 and "web" in said[0]
    chart._log_unavailable.cache_clear()

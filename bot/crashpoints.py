"""Named points where the crash-safety test kills the bot with SIGKILL; without KLING_BOT_CRASH_AT, nothing."""

from __future__ import annotations

import os
import signal

POINTS = ("after_reserve", "after_submit", "before_post", "mid_download", "after_post")


def crash_point(name: str) -> None:
    """Die here, at once and uncleanly, if the environment asks for this point."""
    if os.environ.get("KLING_BOT_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)

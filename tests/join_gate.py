"""Holds re-encodes until a test lets them go, wherever they run: the bot's join processes (each runs `hold` as it
starts, through `clips.child_setup`) or this process. Each re-encode that starts leaves a file naming its process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.media import clips


class Gate:
    """A folder: `started-PID-N` files for the re-encodes that began, and `open` once they may go on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def starts(self) -> list[int]:
        """The process id of each re-encode that began, oldest first."""
        names = sorted(self.folder.glob("started-*"), key=lambda p: int(p.name.split("-")[2]))
        return [int(p.name.split("-")[1]) for p in names]

    def open(self) -> None:
        (self.folder / "open").touch()


def held(reencode: Callable[..., Any], folder: str) -> Callable[..., Any]:
    """`reencode`, once it has said it started and the gate is open."""

    def run(*args: Any, **kwargs: Any) -> Any:
        (Path(folder) / f"started-{os.getpid()}-{time.monotonic_ns()}").touch()
        while not (Path(folder) / "open").exists():  # a child process cannot share an event with the test
            time.sleep(0.01)
        return reencode(*args, **kwargs)

    return run


def hold(folder: str) -> None:
    """A join process's set-up: its re-encodes wait for the gate."""
    clips._reencode = held(clips._reencode, folder)  # type: ignore[assignment]

"""What the bot writes always fits in a Discord message."""

from __future__ import annotations

from cogs.messages import MESSAGE_LIMIT, fit_lines


def test_lines_that_fit_are_all_kept() -> None:
    assert fit_lines("head", ["a", "b"]) == "head\na\nb"


def test_too_many_lines_are_cut_whole_and_counted() -> None:
    text = fit_lines("head", [f"{n:04} " + "x" * 95 for n in range(40)])
    assert len(text) <= MESSAGE_LIMIT
    kept = text.splitlines()[1:-1]
    assert all(len(line) == 100 for line in kept)
    assert text.endswith(f"… and {40 - len(kept)} more")

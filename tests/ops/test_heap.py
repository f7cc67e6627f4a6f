"""The collector's settings the bot takes after start-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bot.ops.heap import YOUNG_THRESHOLD, tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_start_up_objects_are_frozen_and_the_young_generation_waits_longer(restored_collector: None) -> None:
    _, middle, old = gc.get_threshold()
    tune_collector()
    assert gc.get_freeze_count() > 0  # what start-up (here: the test run) made is not walked again
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)

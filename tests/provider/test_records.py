"""The shortcut for a plain still-rendering task record gives exactly what the full validation gives."""

from __future__ import annotations

from typing import Any

import pytest

from bot.provider.records import KlingTask, parse_task

PLAIN = {"id": "901", "status": "processing", "message": "", "create_time": 5, "update_time": 6}


@pytest.mark.parametrize(
    "record",
    [
        PLAIN,
        {"id": "901", "status": "submitted"},
        {**PLAIN, "message": None, "create_time": None},
        {**PLAIN, "id": 901},  # a gateway sending ids as numbers: made a string
        {**PLAIN, "status": " Processing "},  # spelled otherwise: normalised
        {**PLAIN, "create_time": "5", "update_time": True},  # odd times: kept as the validation reads them
        {**PLAIN, "message": 7},
        {**PLAIN, "outputs": None, "billing": []},
        {**PLAIN, "task_status_msg": "extra"},
        {"id": "901", "status": "succeed", "outputs": [{"url": "https://cdn/v.mp4", "duration": 5.041}]},
    ],
)
def test_a_record_parses_as_the_full_validation_reads_it(record: dict[str, Any]) -> None:
    task = parse_task(record)
    expected = KlingTask.model_validate(record)
    assert task == expected
    assert type(task.id) is str and type(task.status) is str
    assert (task.create_time, task.update_time, task.message) == (
        expected.create_time,
        expected.update_time,
        expected.message,
    )

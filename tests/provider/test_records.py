"""The shortcut for a plain still-rendering task record gives exactly what the full validation gives."""

from __future__ import annotations

from typing import Any

import pytest

from bot.provider.records import KlingTask, parse_task, parse_tasks

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
    assert task.model_fields_set == expected.model_fields_set
    assert task.model_dump() == expected.model_dump()
    assert type(task.id) is str and type(task.status) is str
    assert (task.create_time, task.update_time, task.message) == (
        expected.create_time,
        expected.update_time,
        expected.message,
    )


@pytest.mark.parametrize("status", [["processing"], {"state": "processing"}, 7, None, True])
def test_a_status_of_an_odd_json_type_skips_its_record_with_a_line_and_never_raises(
    status: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = parse_tasks([{**PLAIN, "status": status}, {**PLAIN, "id": "902"}])
    assert [task.id for task in tasks] in (["901", "902"], ["902"])  # read as text, or skipped: never raised
    if len(tasks) == 1:
        assert "skipping a task record" in caplog.text

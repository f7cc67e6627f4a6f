"""The provider's answers read leniently: an odd optional field becomes "unknown" instead of dropping the record,
and one malformed record never hides the others (see docs/provider-api.md)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from bot.provider.errors import KlingUnavailable

log = logging.getLogger(__name__)

KNOWN_STATUSES = frozenset({"submitted", "processing", "succeeded", "failed"})
# Kling's older endpoints (and perhaps the gateway) spell the two ends differently.
STATUS_SPELLINGS = {"succeed": "succeeded", "success": "succeeded", "fail": "failed"}
_unknown_statuses: set[str] = set()  # logged once each per process


def _digits_as_str(value: object) -> object:
    # Ids are strings of digits; a gateway that sends them as JSON numbers must not lose precision to floats.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _number_as_text(value: object) -> object:
    # The page writes durations and amounts as strings; a gateway may send numbers.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _status(value: object) -> object:
    if isinstance(value, str):
        value = value.strip().lower()
        return STATUS_SPELLINGS.get(value, value)
    return value


def _or_none(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    # An odd optional field becomes "unknown" instead of dropping the whole task record.
    try:
        return handler(value)
    except ValidationError:
        return None


IdStr = Annotated[str, BeforeValidator(_digits_as_str)]
Text = Annotated[str, BeforeValidator(_number_as_text)]
Status = Annotated[str, BeforeValidator(_status)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class KlingOutput(_Model):
    """One result of a finished task; `url` is a signed CDN link that expires."""

    type: str = "video"
    id: IdStr = ""
    url: str
    duration: Annotated[Text | None, WrapValidator(_or_none)] = None

    @property
    def seconds(self) -> float | None:
        """The video's length in seconds, if the provider gave a readable one."""
        try:
            return float(self.duration) if self.duration is not None else None
        except ValueError:
            return None


class KlingBilling(_Model):
    """What the provider charged; `amount` is a decimal string (or a number, from some gateways)."""

    amount: Text
    charge_type: Annotated[Text | None, WrapValidator(_or_none)] = None
    package_type: Annotated[Text | None, WrapValidator(_or_none)] = None


class KlingTask(_Model):
    """A task as the provider reports it; the status is kept even when we do not know it."""

    id: IdStr
    status: Status
    message: Annotated[Text | None, WrapValidator(_or_none)] = ""
    outputs: Annotated[list[KlingOutput] | None, WrapValidator(_or_none)] = None
    billing: Annotated[list[KlingBilling] | None, WrapValidator(_or_none)] = None
    create_time: Annotated[int | None, WrapValidator(_or_none)] = None
    update_time: Annotated[int | None, WrapValidator(_or_none)] = None

    @property
    def video(self) -> KlingOutput | None:
        """The first video output, if any."""
        return next((o for o in self.outputs or () if o.type == "video" and o.url), None)

    @property
    def billed_amount(self) -> str | None:
        """The charged amount as the provider wrote it, when billing is known."""
        return self.billing[0].amount if self.billing else None


class Envelope(_Model):
    """Every answer: `code` 0 means success whatever the HTTP status says, and vice versa."""

    code: int
    message: str | None = ""
    data: Any = None
    request_id: str | None = None


_PLAIN_KEYS = frozenset({"id", "status", "message", "create_time", "update_time"})
_STILL_RENDERING = frozenset({"submitted", "processing"})
_set = object.__setattr__


def _plain_rendering(data: Any) -> KlingTask | None:
    """A record of a task still rendering, in exactly the types the page shows (most answers of a poll tick), built
    without validation, which is most of a tick's parsing; anything else (even an int id) takes the full path."""
    if type(data) is not dict or not data.keys() <= _PLAIN_KEYS:
        return None
    get = data.get  # (10,000 records a tick: each lookup saved counts)
    status = get("status")
    if type(status) is not str or status not in _STILL_RENDERING:  # (a list or an object is not hashable)
        return None
    task_id, message, created, updated = get("id"), get("message", ""), get("create_time"), get("update_time")
    if (
        type(task_id) is str
        and (message is None or type(message) is str)
        and (created is None or type(created) is int)
        and (updated is None or type(updated) is int)
    ):
        # Made as `model_construct` makes it (the same attributes, a plain record never has outputs or billing)
        # without its walk over every field's default: a fifth of its cost.
        task = object.__new__(KlingTask)
        _set(task, "__dict__", {"id": task_id, "status": status, "message": message, "create_time": created,
                                "update_time": updated, "outputs": None, "billing": None})  # fmt: skip
        _set(task, "__pydantic_fields_set__", set(data))
        _set(task, "__pydantic_extra__", None)
        _set(task, "__pydantic_private__", None)
        return task
    return None


def parse_task(data: Any) -> KlingTask:
    if (plain := _plain_rendering(data)) is not None:
        return plain
    return _validated(data)


def _validated(data: Any) -> KlingTask:
    try:
        task = KlingTask.model_validate(data)
    except ValidationError as exc:
        raise KlingUnavailable(f"malformed task in the answer: {exc.error_count()} problem(s)") from None
    _note_status(task)
    return task


def parse_tasks(data: Any) -> list[KlingTask]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise KlingUnavailable("malformed answer: the task list is not a list")
    tasks = []
    for item in data:
        if (plain := _plain_rendering(item)) is not None:  # most of a tick's records: no call more than needed
            tasks.append(plain)
            continue
        try:
            tasks.append(_validated(item))
        except KlingUnavailable as exc:
            # One bad record must not hide the others; its job stays in flight and is asked about again.
            log.warning("skipping a task record: %s", exc)
    return tasks


def _note_status(task: KlingTask) -> None:
    if task.status not in KNOWN_STATUSES and task.status not in _unknown_statuses:
        _unknown_statuses.add(task.status)
        log.warning("task %s has a status we do not know: %r; such tasks are polled on", task.id, task.status)

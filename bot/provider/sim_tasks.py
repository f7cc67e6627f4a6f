"""The simulator's task model: a task and what decides its fate, its record as a query or a callback shows it,
and the sending of callbacks."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp

from bot.provider.callbacks import sign
from bot.provider.sim_variant import GatewayVariant

log = logging.getLogger(__name__)

RATES = {"720p": Decimal("0.8"), "1080p": Decimal("1.0")}
LEGACY_STATUSES = {"succeeded": "succeed", "failed": "fail"}


@dataclass
class RecordedRequest:
    """One API request as the simulator received it (the video downloads are not recorded)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]


@dataclass
class SimTask:
    """A task and what decides its fate."""

    id: str
    external_id: str | None
    kind: str
    prompt: str
    duration: int
    resolution: str
    created: float
    callback_url: str | None
    status: str = "submitted"
    message: str = ""
    fail_message: str | None = None
    output_id: str = ""
    create_ms: int = 0
    update_ms: int = 0
    finished: bool = False
    sound: bool = True  # its video has an audio track


def task_record(task: SimTask, origin: str, variant: GatewayVariant) -> dict[str, Any]:
    """The task as the reference shows it (no external id: the provider's page does not echo it)."""
    numbers = variant.numbers
    status = LEGACY_STATUSES.get(task.status, task.status) if variant.statuses == "legacy" else task.status
    record: dict[str, Any] = {
        "id": int(task.id) if numbers else task.id,
        "status": status,
        "message": task.message,
        "create_time": str(task.create_ms) if numbers else task.create_ms,
        "update_time": str(task.update_ms) if numbers else task.update_ms,
    }
    if task.status == "succeeded":
        url, duration = f"{origin}/videos/{task.output_id}.mp4", f"{task.duration + 0.041:.3f}"
        output_id, amount = task.output_id, _plain(RATES[task.resolution] * task.duration)
        record["outputs"] = [
            {"type": "video", "id": int(output_id) if numbers else output_id, "url": url,
             "duration": float(duration) if numbers else duration}
        ]  # fmt: skip
        record["billing"] = [
            {"amount": float(amount) if numbers else amount, "charge_type": "unit", "package_type": "video"}
        ]
    return record


def callback_body(task: SimTask, origin: str, variant: GatewayVariant) -> dict[str, Any]:
    """What a callback carries: the page's task record, or Kling's native callback shape."""
    record = task_record(task, origin, variant)
    if variant.callbacks == "page":
        return record
    body: dict[str, Any] = {
        "task_id": record["id"],
        "task_status": record["status"],
        "task_status_msg": record["message"],
        "external_task_id": task.external_id or "",
    }
    if "outputs" in record:
        videos = [{"id": out["id"], "url": out["url"], "duration": out["duration"]} for out in record["outputs"]]
        body["task_result"] = {"videos": videos}
    return body


async def send_callback(url: str, record: dict[str, Any], secret: str | None) -> None:
    """POST a callback, signed (Standard Webhooks) when there is a secret; a callback that fails is only logged."""
    body = json.dumps(record).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        webhook_id, timestamp = f"msg_{uuid.uuid4().hex}", int(time.time())
        headers.update({"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
                        "webhook-signature": sign(secret, webhook_id, timestamp, body)})  # fmt: skip
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            await response.read()
    except Exception as exc:  # fire and forget
        log.warning("callback to %s failed: %r", url, exc)


def _plain(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text

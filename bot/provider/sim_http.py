"""What the simulator's HTTP handlers share: the API's answers and faults, the checks of a submit's body and first
frame as the provider makes them, and a video streamed as a CDN sends it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from PIL import Image

from bot.core.options import InvalidOption, check_settings

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # Kling's safe size for a first frame
FAULTS = frozenset(
    {"rate_limit", "concurrency", "server_error", "unavailable", "html", "slow", "credits", "auth",
     "accept_then_error", "bad_json", "malformed", "empty"}
)  # fmt: skip
CHUNK_BYTES = 64 * 1024
HTML_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>" \
    "<hr><center>nginx</center></body></html>"  # fmt: skip
TIMEOUT_PAGE = "<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway Time-out</h1>" \
    "</center><hr><center>nginx</center></body></html>"  # fmt: skip
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
# Hosts reserved for examples (RFC 2606): nothing can be fetched there, so tests use them as placeholder URLs.
PLACEHOLDER_HOSTS = ("example.com", "example.net", "example.org")
PLACEHOLDER_TLDS = (".example", ".invalid")


@dataclass
class Fault:
    """A fault switched on with `fail_next`: the next `times` requests of kind `on` get it."""

    kind: str
    on: str
    times: int
    retry_after: float | None
    delay: float


class Answer(Exception):
    """Ends a request early with this response: a refusal or a fault."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def envelope(
    data: Any, code: int = 0, message: str = "SUCCEED", status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"code": code, "message": message, "data": data, "request_id": str(uuid.uuid4())}
    return web.json_response(body, status=status, headers=headers)


def refuse(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(envelope(None, code, message, status, headers))


def bad(message: str) -> Answer:
    return refuse(400, 1201, message)


def fault_response(fault: Fault) -> web.Response:
    if fault.kind == "empty":
        return web.Response(status=200, body=b"", content_type="application/json")
    if fault.kind in ("html", "bad_json"):
        return web.Response(status=502 if fault.kind == "html" else 200, text=HTML_PAGE, content_type="text/html")
    retry = {"Retry-After": f"{fault.retry_after if fault.retry_after is not None else 1:g}"}
    status, code, message, headers = {
        "rate_limit": (429, 1302, "request rate limit exceeded", retry),
        "concurrency": (429, 1303, "concurrent task limit exceeded", {}),
        "server_error": (500, 5000, "internal error", {}),
        "accept_then_error": (500, 5000, "internal error", {}),  # on a query: just a lost answer
        "unavailable": (503, 5001, "service under maintenance", {}),
        "credits": (429, 1101, "resource pack exhausted", {}),
        "auth": (401, 1002, "authentication failed: invalid access key", {}),
    }[fault.kind]
    return refuse(status, code, message, headers).response


async def json_body(request: web.Request) -> Any:
    """The request's JSON, or None (aiohttp keeps the bytes, so asking twice is cheap)."""
    if not request.body_exists:
        return None
    try:
        return await request.json()
    except ValueError:
        return None


# --- a submit's body ---------------------------------------------------------------------------------------


def text_request(body: Any) -> tuple[dict[str, Any], str]:
    """A text-to-video body and its prompt, or refused as the provider refuses it."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt is required")
    if len(prompt) > 3072:
        raise bad("prompt must be at most 3072 characters")
    return body, prompt


def image_request(body: Any) -> tuple[dict[str, Any], str, str, str | None]:
    """An image-to-video body, its prompt ("" without one), its first frame (a URL or Base64) and its last frame
    (None without one), or refused. Whether the model takes the last frame is the simulator's to decide."""
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
        raise bad("contents is required")
    frames: dict[str, list[Any]] = {"first_frame": [], "last_frame": []}
    texts = []
    for item in body["contents"]:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in frames:
            frames[kind].append(item.get("url"))
        elif kind == "prompt":
            texts.append(item.get("text"))
        else:
            raise bad(f"contents type {kind!r} is not supported (first_frame, last_frame, prompt)")
    first, last = frames["first_frame"], frames["last_frame"]
    if len(first) != 1 or not isinstance(first[0], str):
        raise bad("contents must hold exactly one first_frame with a url")
    if len(last) > 1 or not all(isinstance(url, str) for url in last):
        raise bad("contents may hold one last_frame, whose url is a string")
    if len(texts) > 1 or not all(isinstance(text, str) for text in texts):
        raise bad("contents may hold one prompt, whose text is a string")
    prompt = texts[0] if texts else ""
    if len(prompt) > 2500:
        raise bad("prompt must be at most 2500 characters")
    return body, prompt, first[0], last[0] if last else None


def task_settings(body: dict[str, Any], kind: str) -> tuple[dict[str, Any], str | None, str | None]:
    """A submit's options (checked by their declaration), external id and callback URL, or refused."""
    settings, options = section(body, "settings"), section(body, "options")
    try:
        chosen = check_settings(kind, settings)
    except InvalidOption as exc:
        raise bad(str(exc)) from None
    external, callback_url = options.get("external_task_id") or None, options.get("callback_url") or None
    if external is not None and not isinstance(external, str):
        raise bad("external_task_id must be a string")
    if callback_url is not None and not str(callback_url).startswith(("http://", "https://")):
        raise bad("callback_url must be an http(s) URL")
    return chosen, external, callback_url


def section(body: dict[str, Any], name: str) -> dict[str, Any]:
    """`settings` or `options`: absent is empty; anything but an object is refused."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{name} must be an object")
    return value


# --- a first frame -----------------------------------------------------------------------------------------


def placeholder(url: str) -> bool:
    """Whether the URL's host is reserved for examples, so that fetching it can only fail."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    return host.endswith(PLACEHOLDER_TLDS) or any(host == h or host.endswith("." + h) for h in PLACEHOLDER_HOSTS)


def decode_base64(text: str) -> bytes:
    """A first frame given as raw Base64 (not a data: URL), decoded, or refused."""
    if text.startswith("data:"):
        raise bad("first_frame must be a URL or raw Base64 without a data: prefix")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad("first_frame is neither a URL nor valid Base64") from None


async def fetch_image(url: str) -> bytes:
    """The first frame's bytes, fetched now as the provider must; refused if it cannot be had."""
    try:
        async with (
            aiohttp.ClientSession(timeout=FETCH_TIMEOUT) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                raise bad(f"first_frame url could not be fetched (HTTP {response.status})")
            data = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                data += chunk
                if len(data) > MAX_IMAGE_BYTES:  # enough to refuse it; the rest need not come
                    break
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise bad(f"first_frame url could not be fetched ({type(exc).__name__})") from None
    return bytes(data)


def check_image(data: bytes) -> None:
    """Refuse what the provider refuses: anything but a JPEG or PNG within Kling's size and shape limits."""
    if len(data) > MAX_IMAGE_BYTES:
        raise bad("first_frame must be at most 10 MB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
            image.verify()
    except Exception:  # Pillow raises many types for a broken file; all mean the same here
        raise bad("first_frame is not a readable image") from None
    if kind not in ("JPEG", "MPO", "PNG"):  # MPO: a camera's JPEG with extra frames
        raise bad(f"first_frame format {kind} is not supported (jpg, jpeg, png)")
    if min(width, height) < 300:
        raise bad("first_frame must be at least 300 px on each side")
    if max(width, height) / min(width, height) > 2.5:
        raise bad("first_frame aspect ratio must be between 1:2.5 and 2.5:1")


# --- the CDN -----------------------------------------------------------------------------------------------


async def stream_video(request: web.Request, data: bytes, trickle: float) -> web.StreamResponse:
    """Send an mp4 in 64 KB pieces, or (`trickle` > 0) one byte per `trickle` seconds, as a slow CDN."""
    response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
    response.content_length = len(data)
    await response.prepare(request)
    view = memoryview(data)
    step = 1 if trickle else CHUNK_BYTES
    for start in range(0, len(data), step):
        if trickle:
            await asyncio.sleep(trickle)
        await response.write(view[start : start + step])
    await response.write_eof()
    return response

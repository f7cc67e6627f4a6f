"""Request bodies as JSON, a large one (a first frame in Base64) off the event loop."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# A request body with more text than this (a first frame in Base64) is encoded in a worker thread, piece by piece;
# a smaller one costs less than the hop to a thread.
LARGE_BODY_CHARS = 64 * 1024
JSON_PIECE = 64 * 1024  # characters of one long string escaped per json.dumps call
# One thread encodes every large body (see bot/media/images.py: the GIL serialises encodes; fewer malloc arenas).
_encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="json")


async def encode_body(body: dict[str, Any]) -> bytes | io.BytesIO:
    """A request body as JSON: a large one (a first frame) in the encoder thread, a small one right here."""
    if _text_chars(body) <= LARGE_BODY_CHARS:
        return json.dumps(body).encode()
    # As a file, aiohttp sends it in 64 KB pieces as the socket takes them, instead of copying the rest of a
    # 13 MB body into the transport's buffer on the loop.
    return await asyncio.get_running_loop().run_in_executor(_encoder, encode_json, body)


def encode_json(value: Any) -> io.BytesIO:
    """What `json.dumps(value).encode()` gives, with long strings escaped piece by piece; run it in a thread."""
    # One json.dumps over a 13 MB string holds the GIL for tens of milliseconds, stalling the event loop even
    # from a thread; between pieces the loop gets its turn. JSON escapes each character alone, so pieces join.
    out = io.BytesIO()
    for piece in _json_pieces(value):
        out.write(piece.encode("ascii"))
    out.seek(0)
    return out


def _json_pieces(value: Any) -> Iterator[str]:
    if isinstance(value, str) and len(value) > JSON_PIECE:
        yield '"'
        for start in range(0, len(value), JSON_PIECE):
            yield json.dumps(value[start : start + JSON_PIECE])[1:-1]
        yield '"'
    elif isinstance(value, dict):
        yield "{"
        for number, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"request body keys must be strings, not {type(key).__name__}")
            yield (", " if number else "") + json.dumps(key) + ": "
            yield from _json_pieces(item)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for number, item in enumerate(value):
            if number:
                yield ", "
            yield from _json_pieces(item)
        yield "]"
    else:
        yield json.dumps(value)


def _text_chars(value: Any) -> int:
    """Roughly how long the JSON of a request body is: its strings dominate, numbers are counted as a few."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(key)) + _text_chars(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(_text_chars(item) for item in value)
    return 8

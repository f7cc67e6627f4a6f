"""How a simulated gateway may differ from the provider's page.

Nobody has proven that Cloudsway's gateway behaves as its page says, so `GatewayVariant` (`sim.variant`, or
`--variant KEY=VALUE` on the command line) switches on one plausible difference each; every default follows the page:
- query_lists=accept|refuse|partial: the page lists `task_ids=a,b,c`; refuse: several ids in one parameter get
  400/1201; partial: several ids answer only the first task that exists, the rest dropped silently.
- query_cap=N: the page names no limit (Kling's is 20, the default); more than N ids in one query get 400/1201.
- statuses=page|legacy: the page says `succeeded`/`failed`; legacy says `succeed`/`fail` (Kling's older endpoints).
- numbers=true: the page has string ids, durations, amounts and integer times; this flips each to the other type.
- first_frame=any|url_only|base64_only: the page shows an http(s) URL, Kling also takes raw Base64; url_only
  refuses Base64, base64_only refuses URLs (a gateway that cannot fetch outside URLs), each with 400/1201.
- fetch_urls=true|false: the provider must fetch a first-frame URL; true fetches it at submit and refuses what is
  not a readable JPEG/PNG within limits (the reserved example.com/.org/.net, *.example and *.invalid hosts are
  taken unchecked, as placeholders); false takes every URL unchecked.
- callbacks=page|native: the page's callbacks would carry its task record; native carries Kling's own
  `task_id`/`task_status`/`task_status_msg`/`external_task_id`/`task_result.videos` shape.
- late_submit=S: a submit checks its request, answers a proxy's 504 HTML page, and its task appears (and starts
  rendering) S seconds later by the simulator's clock; the page answers at once.
- dedupe_external_ids=false: Kling refuses a repeated external_task_id (400/1201); false makes a second task
  (both render and bill) and a query by that external id answers all of them.
- audio=accept|refuse|refuse_unnamed: the page lists no `settings.audio` (Kling's own API takes "native" or
  "off"); refuse answers a parameter error naming it (400/1201), refuse_unnamed a bare HTTP 422 naming nothing.
  Either way no task is made.
- last_frame=documented|accept|refuse|ignore: whether a `last_frame` in `contents` is taken. documented (the
  default) follows Kling's capability map for the simulator's model (kling-3.0 takes one, turbo does not: 400/1201);
  accept and refuse force either; ignore takes the submit and renders as if no last frame had been sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

MAX_IDS = 20  # Kling's cap on the ids of one query
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass
class GatewayVariant:
    """How this simulated gateway differs from the provider's page; every default follows the page."""

    query_lists: Literal["accept", "refuse", "partial"] = "accept"
    query_cap: int = MAX_IDS
    statuses: Literal["page", "legacy"] = "page"
    numbers: bool = False
    first_frame: Literal["any", "url_only", "base64_only"] = "any"
    fetch_urls: bool = True
    callbacks: Literal["page", "native"] = "page"
    late_submit: float | None = None
    dedupe_external_ids: bool = True
    audio: Literal["accept", "refuse", "refuse_unnamed"] = "accept"
    last_frame: Literal["documented", "accept", "refuse", "ignore"] = "documented"

    @classmethod
    def parse(cls, items: Sequence[str]) -> GatewayVariant:
        """Build a variant from `KEY=VALUE` items; raises ValueError naming the first bad item."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for item in items:
            key, equals, raw = (part.strip() for part in item.partition("="))
            if not equals or key not in hints:
                raise ValueError(f"bad gateway variant {item!r}: expected KEY=VALUE, KEY one of {', '.join(hints)}")
            try:
                values[key] = _parse_value(hints[key], raw)
            except ValueError as exc:
                raise ValueError(f"bad gateway variant {item!r}: {exc}") from None
        return cls(**values)


def describe(variant: GatewayVariant) -> str:
    """The switches that differ from the page, as `KEY=VALUE, ...`, or that none does."""
    shown = []
    for f in fields(variant):
        value = getattr(variant, f.name)
        if value != f.default:  # written back as `--variant` takes it: true, 40, partial
            text = f"{value:g}" if isinstance(value, float) else str(value)
            shown.append(f"{f.name}={text.lower()}")
    return ", ".join(shown) or "none (the provider's page)"


def _parse_value(hint: Any, raw: str) -> Any:
    if get_origin(hint) is Literal:
        if raw not in get_args(hint):
            raise ValueError(f"expected one of {', '.join(get_args(hint))}")
        return raw
    if hint is bool:
        if raw.lower() not in (*_TRUE, *_FALSE):
            raise ValueError("expected true or false")
        return raw.lower() in _TRUE
    if hint is int:
        number = int(raw)
        if number < 1:
            raise ValueError("expected a whole number of at least 1")
        return number
    if raw.lower() in ("", "none", "off"):  # late_submit: float | None
        return None
    seconds = float(raw)
    if not 0 <= seconds < float("inf"):
        raise ValueError("expected seconds, 0 or more")
    return seconds

"""A job's options (duration, resolution, aspect ratio, sound), each declared once: its values, default, cost
effect, its field in the API body and the member's refusal. The intake validates with it, the client builds the API
body from it and the simulator checks a submit with it; `JobOptions` is one job's validated choice.

A new option is one more `Option` in `OPTIONS` (and, to be stored, a `jobs` column of the same name)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.core import quota
from bot.core.i18n import english

KINDS = ("text", "image")


@dataclass(frozen=True, slots=True)
class Option:
    """One option: `name` is its field on a request and a job (and its `jobs` column, CLI flag, slash option)."""

    name: str
    allowed: tuple[Any, ...]  # the values the provider accepts, in the order the member is offered them
    default: Any
    refusal: Callable[[Any], str]  # the member's words for a value outside `allowed`
    api_field: str  # its key in the API body's `settings`
    kinds: tuple[str, ...] = KINDS  # the job kinds that take it; another kind leaves it out of the body
    other_kind: str = ""  # the member's words when a kind that does not take it is given one
    # seconds multiply the rate; the rate is looked up by the `rate` value, and its with-sound rate by `sound`
    cost: Literal["seconds", "rate", "sound"] | None = None
    help: str = ""  # the command line's description
    label: str = ""  # the options line's message id (marked with `english`), filled in by `label_field`; "": as is
    label_field: str = "value"
    labels: Mapping[Any, str] = field(default_factory=dict)  # a message id per value, instead of `label`
    # How each value is written in the API body (absent: as it is). A value of None (not chosen, no default) is
    # left out of the body, so the provider's own default stands.
    api_values: Mapping[Any, Any] = field(default_factory=dict)

    def takes(self, kind: str) -> bool:
        return kind in self.kinds

    def to_api(self, value: Any) -> Any:
        return self.api_values.get(value, value)

    def from_api(self, value: Any) -> Any:
        """The member's value for an API value (or the API value itself when it names none)."""
        return next((mine for mine, theirs in self.api_values.items() if theirs == value), value)

    def provider_refusal(self, value: Any) -> str:
        """What the provider says about a value it does not accept."""
        if all(isinstance(v, int) for v in self.allowed):
            return f"{self.api_field} must be an integer from {min(self.allowed)} to {max(self.allowed)}"
        accepted = ", ".join(str(self.to_api(v)) for v in self.allowed)
        return f"{self.api_field} {value!r} is not supported ({accepted})"


OPTIONS: list[Option] = [
    Option(
        name="duration",
        allowed=tuple(range(3, 16)),
        default=5,
        refusal=lambda value: english(
            "The duration must be a whole number of seconds from 3 to 15, not {duration}.", duration=value
        ),
        api_field="duration",
        cost="seconds",
        help="seconds, 3-15 (default: DEFAULT_DURATION)",
        label=english("{seconds} s"),
        label_field="seconds",
    ),
    Option(
        name="resolution",
        allowed=("720p", "1080p"),
        default="720p",
        refusal=lambda value: english("The resolution must be 720p or 1080p, not {resolution}.", resolution=value),
        api_field="resolution",
        cost="rate",
        help="720p or 1080p (default: DEFAULT_RESOLUTION)",
    ),
    Option(
        name="aspect_ratio",
        allowed=("16:9", "9:16", "1:1"),
        default="16:9",
        refusal=lambda value: english("The aspect ratio must be 16:9, 9:16 or 1:1, not {ratio}.", ratio=value),
        api_field="aspect_ratio",
        kinds=("text",),
        other_kind=english("An image video takes its shape from the image; leave the aspect ratio out."),
        help="16:9, 9:16 or 1:1 (text videos only)",
    ),
    Option(
        name="sound",
        allowed=("on", "off"),
        default=None,  # not chosen: nothing is sent and the provider's default stands (turbo: with sound)
        refusal=lambda value: english("The sound must be on or off, not {sound}.", sound=value),
        api_field="audio",  # Kling's own API: "native" (sound made by the model, speech included) or "off"
        api_values={"on": "native", "off": "off"},
        cost="sound",
        help="on or off (default: the server's, else the provider's: with sound)",
        labels={"on": english("with sound"), "off": english("silent")},
    ),
]


def option(name: str) -> Option:
    return next(o for o in OPTIONS if o.name == name)


DEFAULT_MODEL = "kling-3.0-turbo"  # the gateway's page: the last part of the submit paths


@dataclass(frozen=True, slots=True)
class Frame:
    """An image a job may carry: `name` is its request field (`image`, `end_image`), `content` its item's type in
    the API body's `contents`, `models` the models documented to take it (None: every model)."""

    name: str
    content: str
    models: tuple[str, ...] | None = None


# Kling documents a last frame for kling-3.0 but not for the turbo model (docs/provider-api.md); other models are
# assumed to take none until proven.
FRAMES: list[Frame] = [
    Frame(name="image", content="first_frame"),
    Frame(name="end_image", content="last_frame", models=("kling-3.0",)),
]


def frame(name: str) -> Frame:
    return next(f for f in FRAMES if f.name == name)


def takes_frame(model: str, name: str) -> bool:
    """Whether `model` is documented to take the frame `name`."""
    models = frame(name).models
    return models is None or model in models


class InvalidOption(ValueError):
    """An option's value breaks its declaration; the message is the member's words."""


def _allowed(opt: Option, value: Any) -> bool:
    # True and 5.0 equal ints to Python; neither is a whole number of seconds to the provider.
    return not isinstance(value, bool) and value in opt.allowed and type(value) in {type(v) for v in opt.allowed}


@dataclass(frozen=True, slots=True)
class JobOptions:
    """One job's options, checked against `OPTIONS` when made: a value for each option its kind takes (the
    default when not chosen), None for each it does not."""

    kind: str
    values: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, kind: str, chosen: Mapping[str, Any]) -> JobOptions:
        """`chosen` (None: not chosen) checked in declaration order; raises `InvalidOption` at the first bad one."""
        unknown = set(chosen) - {o.name for o in OPTIONS}
        if unknown:
            raise InvalidOption(f"unknown options: {sorted(unknown)}")
        values = []
        for opt in OPTIONS:
            value = chosen.get(opt.name)
            if not opt.takes(kind):
                if value is not None:
                    raise InvalidOption(opt.other_kind or f"a {kind} video takes no {opt.name}")
            elif value is None:
                value = opt.default
            elif not _allowed(opt, value):
                raise InvalidOption(opt.refusal(value))
            values.append((opt.name, value))
        return cls(kind, tuple(values))

    @classmethod
    def stored(cls, kind: str, row: object) -> JobOptions:
        """A stored job's options, read by name from its row (checked when it was made)."""
        return cls(kind, tuple((opt.name, getattr(row, opt.name, None)) for opt in OPTIONS))

    def __getitem__(self, name: str) -> Any:
        return dict(self.values)[name]

    @property
    def duration(self) -> int:
        return int(self["duration"])

    @property
    def resolution(self) -> str:
        return str(self["resolution"])

    def without(self, name: str) -> JobOptions:
        """The same options with `name` not chosen (left out of the body when it has no default)."""
        return JobOptions(self.kind, tuple((n, None if n == name else v) for n, v in self.values))

    def cost(self, rates: Mapping[str, int], *, sound_offered: bool = True) -> int:
        """The credits (milli) these options reserve: the `seconds` option times the rate of the `rate` option, its
        with-sound rate unless the `sound` option says off (not chosen: the provider's default, which is with
        sound) or the service offers no sound control (`sound_offered` False: charged as silent)."""
        by_role = {option(name).cost: value for name, value in self.values}
        with_sound = sound_offered and by_role.get("sound") != "off"
        return quota.job_cost(by_role["seconds"], by_role["rate"], rates, with_sound=with_sound)

    def settings(self) -> dict[str, Any]:
        """The API body's `settings`: each option this kind takes, under its field (a row without one: the default;
        None, an option not chosen that has no default, is left out)."""
        chosen = dict(self.values)
        found = {}
        for opt in OPTIONS:
            value = opt.default if chosen.get(opt.name) is None else chosen[opt.name]
            if opt.takes(self.kind) and value is not None:
                found[opt.api_field] = opt.to_api(value)
        return found

    def columns(self) -> dict[str, Any]:
        """The job row's columns, one per option."""
        return dict(self.values)


def with_defaults(chosen: Mapping[str, Any], settings: object) -> dict[str, Any]:
    """Each option as chosen, else the operator's setting `default_<name>` when there is one, else None (which
    `JobOptions.of` makes the declared default)."""
    found = {}
    for opt in OPTIONS:
        value = chosen.get(opt.name)
        found[opt.name] = value if value not in (None, "") else getattr(settings, f"default_{opt.name}", None)
    return found


def check_settings(kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """A submit's `settings` checked as the provider checks them; returns each option's value by name (the default
    when absent) or raises `InvalidOption` in the provider's words."""
    found: dict[str, Any] = {}
    for opt in OPTIONS:
        present = opt.api_field in settings
        if not opt.takes(kind):
            if present:
                raise InvalidOption(f"{opt.api_field} is not accepted for {kind} to video")
            continue
        if not present:
            found[opt.name] = opt.default
            continue
        sent = settings[opt.api_field]
        value = opt.from_api(sent)
        if not _allowed(opt, value) or (opt.api_values and sent not in opt.api_values.values()):
            raise InvalidOption(opt.provider_refusal(sent))
        found[opt.name] = value
    return found

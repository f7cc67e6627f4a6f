"""Imports only go down the layers (docs/architecture.md): a module never imports one of a higher layer.

The layers, lowest first. Within a layer any import is allowed; the Discord front end (`bot.app` and `cogs`) sits
near the top, and the cogs may not reach storage; nothing but the front end imports discord.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, ...]] = [
    ("bot.crashpoints", "bot.core.i18n", "bot.core.options", "bot.core.model", "bot.core.quota", "bot.core.scheduling"),
    ("bot.config",),
    ("bot.serving",),
    ("bot.storage",),
    ("bot.provider", "bot.media"),
    (
        "bot.core.jobs",
        "bot.core.job_base",
        "bot.core.intake",
        "bot.core.dispatch",
        "bot.core.polling",
        "bot.core.delivery_book",
        "bot.core.job_reads",
        "bot.core.credits",
        "bot.core.review",
    ),
    ("bot.resources", "bot.ops"),
    # The web front end (the dashboard): over the services, without discord.
    ("bot.web",),
    # The Discord front end: the bot (which installs the cogs' translator) and the cogs.
    ("bot.app", "cogs"),
    ("bot.__main__",),
]
FORBIDDEN_FOR_COGS = ("bot.storage",)
DISCORD_ALLOWED = ("bot.app", "cogs")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> int:
    matches = [(len(p), rank) for rank, layer in enumerate(LAYERS) for p in layer if within(name, p)]
    if not matches:
        raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")
    return max(matches)[1]


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


# The packages' own `__init__.py` hold only their docstring; the modules are what is layered.
SOURCES = sorted(p for folder in ("bot", "cogs") for p in (ROOT / folder).rglob("*.py") if p.name != "__init__.py")


def our_modules(names: set[str]) -> set[str]:
    """The imported names that are modules or packages of ours (`from bot.core import jobs` names bot.core.jobs)."""
    known = {module_name(p) for p in SOURCES}
    return {n for n in names if n in known}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_only_go_down_the_layers(path: Path) -> None:
    name = module_name(path)
    mine = layer_of(name)
    found = imports(path)
    upward = sorted(m for m in our_modules(found) if layer_of(m) > mine)
    assert not upward, f"{name} (layer {mine}) imports from a higher layer: {upward}"
    if within(name, "cogs"):
        reached = sorted(m for m in found if any(within(m, f) for f in FORBIDDEN_FOR_COGS))
        assert not reached, f"{name} reaches storage directly: {reached}"
    if not any(within(name, d) for d in DISCORD_ALLOWED):
        assert not any(within(m, "discord") for m in found), f"{name} imports discord below the front end"


def test_every_module_has_a_layer() -> None:
    for path in SOURCES:
        layer_of(module_name(path))


def test_the_layers_are_in_order() -> None:
    # The check itself: a storage module importing the job service is an upward import.
    assert layer_of("bot.storage.sqlite") < layer_of("bot.core.jobs")
    assert layer_of("cogs.video") > layer_of("bot.core.jobs")
    assert any(within("bot.storage.postgres", f) for f in FORBIDDEN_FOR_COGS)


def test_no_two_modules_share_a_name_across_layers() -> None:
    # bot/delivery.py once downloaded while cogs/delivery.py posted: a name says what one module holds.
    by_name: dict[str, list[str]] = {}
    for path in SOURCES:
        if path.stem != "__main__":
            by_name.setdefault(path.stem, []).append(module_name(path))
    assert {name: places for name, places in by_name.items() if len(places) > 1} == {}

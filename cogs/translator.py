"""Slash commands in the member's language: Discord shows each command's localized name and description, which
this translator gives from the same catalogs as the bot's messages (`bot/core/i18n.py`).

`extract` is the Babel extraction method for `cogs/` (see `babel.cfg`): the `tr(...)`, `english(...)` and
`locale_str(...)` messages of a file, plus every name, description and choice of the commands its cogs define,
so `pybabel extract` finds the command texts too.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import discord
from babel.messages.extract import extract_python
from discord import app_commands
from discord.ext import commands

from bot.core.i18n import ENGLISH, catalog, language


class CatalogTranslator(app_commands.Translator):
    """Each command text's English is its message id; no translation means Discord shows the English."""

    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        lang = language(locale)
        if lang == ENGLISH:
            return None
        return catalog(lang).get(string.message)


def command_texts(command: app_commands.Command[Any, ..., Any] | app_commands.Group) -> Iterator[str]:
    """The texts Discord shows of a command or group: names, descriptions, parameters and choices."""
    yield command.name
    yield command.description
    if isinstance(command, app_commands.Group):
        for sub in command.commands:
            yield from command_texts(sub)
        return
    for parameter in command.parameters:
        yield parameter.display_name
        yield parameter.description
        for choice in parameter.choices:
            yield choice.name


def extract(
    fileobj: IO[bytes], keywords: Mapping[str, Any], comment_tags: Collection[str], options: Mapping[str, Any]
) -> Iterator[tuple[int, str, str | tuple[str, ...], list[str]]]:
    """Babel's Python extraction, then the texts of the commands of the cogs this file defines."""
    yield from extract_python(fileobj, keywords, comment_tags, options)  # type: ignore[arg-type,misc]
    module = importlib.import_module(f"cogs.{Path(getattr(fileobj, 'name', '')).stem}")
    for _, cog in inspect.getmembers(module, inspect.isclass):
        if not issubclass(cog, commands.Cog) or cog.__module__ != module.__name__:
            continue
        for command in cog.__cog_app_commands__:
            line = inspect.getsourcelines(cog)[1]
            for text in command_texts(command):
                if text and text != "…":  # discord.py's placeholder for a command without a description
                    yield line, "", text, []

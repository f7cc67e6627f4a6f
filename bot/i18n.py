"""The bot's words in the member's language: English source strings, translations in gettext `.po` catalogs.

Every text the bot writes goes through `tr(locale, "English text {name}", name=...)`. The English text is the
message id; `bot/locales/<language>/LC_MESSAGES/messages.po` holds its translation. A locale with no catalog, or a
message with no translation, falls back to English (`tests/test_i18n.py` fails when a catalog misses one).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from babel.messages.pofile import read_po

LOCALES_DIR = Path(__file__).parent / "locales"
ENGLISH = "en-US"
CHINESE = "zh-CN"
SUPPORTED = (ENGLISH, CHINESE)


def language(locale: object) -> str:
    """Discord's locale (a `discord.Locale`, its string, or None) reduced to one we speak."""
    text = str(getattr(locale, "value", locale) or "")
    return CHINESE if text.lower().startswith("zh") else ENGLISH


@functools.cache
def catalog(lang: str) -> dict[str, str]:
    """The translations of one language: English message id to translated text (empty for English)."""
    path = LOCALES_DIR / lang.replace("-", "_") / "LC_MESSAGES" / "messages.po"
    if lang == ENGLISH or not path.exists():
        return {}
    with path.open("rb") as handle:
        po = read_po(handle)
    return {str(m.id): str(m.string) for m in po if m.id and m.string and not m.fuzzy}


def tr(locale: object, message: str, /, **values: Any) -> str:
    """`message` in `locale`'s language, with `{name}` fields filled from `values`."""
    text = catalog(language(locale)).get(message, message)
    return text.format(**values) if values else text

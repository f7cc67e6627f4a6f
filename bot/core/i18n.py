"""The bot's words in the member's language: English source strings, translations in gettext `.po` catalogs.

Every text the bot writes goes through `tr(locale, "English text {name}", name=...)`. The English text is the
message id; `bot/core/locales/<language>/LC_MESSAGES/messages.po` holds its translation. A locale with no catalog, or a
message with no translation, falls back to English (`tests/core/test_i18n.py` fails when a catalog misses one).

The core knows no member's language: it writes its member-facing texts (refusals, a job's stored error) with
`english("English text {name}", name=...)`, which marks the message id for extraction and returns the English
text. A cog shows such a text with `translated(locale, text)`, which finds its message id again by matching the
filled-in text against the catalog's ids (so a reason stored in the database is translated too).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from babel.messages.pofile import read_po

LOCALES_DIR = Path(__file__).parent / "locales"
ENGLISH = "en-US"
CHINESE = "zh-CN"
SUPPORTED = (ENGLISH, CHINESE)
FIELD = re.compile(r"\{(\w+)\}")


def language(locale: object) -> str:
    """Discord's locale (a `discord.Locale`, its string, or None) reduced to one we speak: the first of `SUPPORTED`
    with its language (zh-TW gets zh-CN), else English."""
    text = str(getattr(locale, "value", locale) or "").lower()
    return next((lang for lang in SUPPORTED if text.split("-")[0] == lang.split("-")[0].lower()), ENGLISH)


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


def english(message: str, /, **values: Any) -> str:
    """A core message, in English; a cog shows it in the member's language with `translated`."""
    return message.format(**values) if values else message


@functools.cache
def _patterns(lang: str) -> list[tuple[re.Pattern[str], str]]:
    """Each message id with fields as a pattern that matches its filled-in English, most specific first."""
    found = []
    for msgid, text in catalog(lang).items():
        literal = FIELD.sub("", msgid)
        if literal.strip() == "" or literal == msgid:
            continue  # no fields (found by exact lookup), or nothing but fields (would match anything)
        seen: set[str] = set()
        parts = []
        for piece in re.split(r"(\{\w+\})", msgid):
            name = piece[1:-1] if FIELD.fullmatch(piece) else None
            if name is None:
                parts.append(re.escape(piece))
            else:
                parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
                seen.add(name)
        found.append((len(literal), re.compile("".join(parts), re.DOTALL), text))
    found.sort(key=lambda entry: -entry[0])
    return [(pattern, text) for _, pattern, text in found]


def translated(locale: object, text: str) -> str:
    """An English text the core filled in (`english(...)`, perhaps stored since) in `locale`'s language. A field
    that is a whole message itself ("no reason given") is translated too; any other field (a provider's words, a
    moderator's reason) stays as it is, and so does text that matches no message id."""
    translations = catalog(language(locale))
    if not translations or text in translations:
        return translations.get(text, text)
    for pattern, translation in _patterns(language(locale)):
        match = pattern.fullmatch(text)
        if match:
            return translation.format(**{name: translations.get(v, v) for name, v in match.groupdict().items()})
    return text

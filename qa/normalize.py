"""Search normalisation: the form of a text that matching sees.

Documents keep the text exactly as it was extracted (every offset points into it); only
what is compared — BM25 tokens of chunks and questions, the text given to the embedding
model — goes through :func:`search_form`, so ``ﬁnal`` matches ``final``, ``ＡＢＣ１２``
matches ``ABC12`` and a soft hyphen or zero-width space does not split a word.
Document ids and path filters compare in NFC (:func:`nfc`), so an id typed in decomposed
form (macOS file names) names the same document.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Removed: soft hyphen, zero-width space / non-joiner / joiner, word joiner, BOM/ZWNBSP,
# Mongolian vowel separator, invisible times/separator/plus.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff]")
# After NFKC (which maps NBSP, narrow NBSP and figure space to U+0020 already) any other
# space separator becomes a plain space.
_SPACES = re.compile(r"[^\S\r\n\t\f\v]")


def search_form(text: str) -> str:
    """``text`` as search compares it: NFKC (ligatures, full-width and other compatibility
    forms to their plain letters and digits), soft hyphens and zero-width characters
    removed, every space separator (NBSP included) a plain space.

    The result may be shorter or longer than ``text``; never use its offsets.
    """
    if text.isascii():
        return text
    return _SPACES.sub(" ", _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)))


@lru_cache(maxsize=65536)
def nfc(text: str) -> str:
    """``text`` in Unicode normalisation form C (how document ids and paths compare)."""
    return unicodedata.normalize("NFC", text)


__all__ = ["nfc", "search_form"]

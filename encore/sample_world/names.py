"""Artist and track names in several scripts, as a LastFM export really looks.

Names never contain tab, newline or double quote: the raw file is tab-separated and unquoted.
"""

from __future__ import annotations

import numpy as np

_LATIN_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
                 "br", "cr", "dr", "st", "tr", "sh", "ch", "th", "gr", "fl", "kl")
_LATIN_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou", "y")
_LATIN_ACCENTED = ("á", "é", "í", "ó", "ú", "ü", "ö", "ä", "ø", "å", "ñ", "ç")
_CYR_C = "бвгдзклмнпрстфхцчш"
_CYR_V = "аеиоуыяю"
_GREEK_C = "βγδζθκλμνξπρστφχ"
_GREEK_V = "αεηιουω"
_KANA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン"
_HAN = "月光夜雨风花心梦海星天歌火山水城空雪春秋"

# Share of artists by script; LastFM-1K is mostly Latin script with a long multilingual tail.
SCRIPTS = ("latin", "latin_accented", "cyrillic", "japanese", "greek", "korean", "chinese")
SCRIPT_SHARE = np.array([0.58, 0.12, 0.09, 0.08, 0.04, 0.05, 0.04])


def _word(rng: np.random.Generator, script: str) -> str:
    n = int(rng.integers(2, 4))
    if script in ("latin", "latin_accented"):
        parts = [_LATIN_ONSETS[rng.integers(len(_LATIN_ONSETS))] + _LATIN_VOWELS[rng.integers(len(_LATIN_VOWELS))]
                 for _ in range(n)]
        w = "".join(parts)
        if script == "latin_accented":
            i = int(rng.integers(len(w)))
            w = w[:i] + _LATIN_ACCENTED[rng.integers(len(_LATIN_ACCENTED))] + w[i + 1:]
        return w.capitalize()
    if script == "cyrillic":
        return "".join(_CYR_C[rng.integers(len(_CYR_C))] + _CYR_V[rng.integers(len(_CYR_V))]
                       for _ in range(n)).capitalize()
    if script == "greek":
        return "".join(_GREEK_C[rng.integers(len(_GREEK_C))] + _GREEK_V[rng.integers(len(_GREEK_V))]
                       for _ in range(n)).capitalize()
    if script == "japanese":
        return "".join(_KANA[rng.integers(len(_KANA))] for _ in range(n + 1))
    if script == "korean":
        return "".join(chr(0xAC00 + int(rng.integers(0, 11172))) for _ in range(n))
    return "".join(_HAN[rng.integers(len(_HAN))] for _ in range(n))


def artist_name(rng: np.random.Generator, script: str) -> str:
    words = [_word(rng, script) for _ in range(int(rng.integers(1, 3)))]
    name = " ".join(words)
    if script == "latin" and rng.random() < 0.15:
        name = "The " + name
    return name


def track_title(rng: np.random.Generator, script: str, style_words: tuple[str, ...],
                common: tuple[str, ...]) -> str:
    if script not in ("latin", "latin_accented") and rng.random() < 0.6:
        return " ".join(_word(rng, script) for _ in range(int(rng.integers(1, 3))))
    words = [style_words[rng.integers(len(style_words))]]
    if rng.random() < 0.6:
        words.insert(0, common[rng.integers(len(common))])
    return " ".join(w.capitalize() for w in words)


def unique(names: list[str]) -> list[str]:
    """Make names unique by suffixing repeats with (2), (3), ... in first-seen order."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0) + 1
        seen[n] = k
        out.append(n if k == 1 else f"{n} ({k})")
    return out

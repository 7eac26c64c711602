"""Russian <-> English terms: the hand list (corpus/glossary.yaml) plus pairs mined from the atlas; hand entries win."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import yaml

from .keyword import tokenize

MINED = "glossary-mined.json"  # in the data folder, written by each ingest that reads the atlas
_CYR = re.compile(r"[а-яёА-ЯЁ]")
_LAT = re.compile(r"[A-Za-z]")
_PAREN = re.compile(r"([^\W\d_][\w-]*)\s*\(([^()]+)\)")  # 'смещения (bias)', 'Hybrid Systems (гибрид)'
_BR = re.compile(r"<br\s*/?>", re.I)
_NODE_LABEL = re.compile(r"[\[({]+\"?([^\[\](){}]*?(?:<br\s*/?>[^\[\]{}]*?)+)\"?[\])}]+")
_SUBGRAPH = re.compile(r"subgraph\s+([A-Za-z]{3,})\s*\[\s*\"?([^\]\"]+)\"?\s*\]")
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F\u200D]")


def script(text: str) -> str | None:
    """'ru' or 'en' when one script clearly leads, else None. Example: 'Верхние слои' -> 'ru'; 'Low-Rank адаптация' -> None."""
    cyr, lat = len(_CYR.findall(text)), len(_LAT.findall(text))
    if cyr >= 2 * max(lat, 1) or (cyr and not lat):
        return "ru"
    if lat >= 2 * max(cyr, 1) or (lat and not cyr):
        return "en"
    return None


def _clean(text: str) -> str:
    """Example: '## 🧰 6. Fine-Tuning Stack' -> 'Fine-Tuning Stack'."""
    text = re.sub(r"\s+", " ", _EMOJI.sub("", re.sub(r"[*_`#>]+", " ", text))).strip(" .:;,-—")
    return re.sub(r"^\d+(?:\.\d+)*\.?\s*", "", text)


def _pair(a: str, b: str) -> tuple[str, str] | None:
    """(russian, english) when a and b are in different scripts. Example: ('Верхние слои', 'Partial') -> that pair."""
    a, b = _clean(a), _clean(b)
    sa, sb = script(a), script(b)
    if not a or not b or not sa or not sb or sa == sb or len(tokenize(a)) > 6 or len(tokenize(b)) > 6:
        return None
    return (a, b) if sa == "ru" else (b, a)


def mine_pairs(markdown: str) -> list[tuple[str, str]]:
    """Russian/English pairs a document states itself: two-line diagram labels, subgraph ids and titles, headings
    'English — русский', and 'слово (word)' glosses.

    Example: 'A[Partial / Head-only<br/>💡 Верхние слои]' -> [('Верхние слои', 'Partial / Head-only')].
    """
    found: list[tuple[str, str] | None] = []
    for m in _NODE_LABEL.finditer(markdown):
        parts = [p for p in _BR.split(m.group(1)) if p.strip()]
        found += [_pair(parts[0], p) for p in parts[1:]]
    found += [_pair(m.group(2), m.group(1)) for m in _SUBGRAPH.finditer(markdown)]
    for line in markdown.splitlines():
        if line.lstrip().startswith("#"):  # a heading pairs its halves; its brackets name things ('(Mermaid)')
            head, dash, tail = line.lstrip("# ").partition(" — ")
            found.append(_pair(head, tail) if dash else None)
        else:
            found += [_pair(m.group(1), m.group(2)) for m in _PAREN.finditer(line)]
    return list(dict.fromkeys(p for p in found if p))


class Glossary:
    """Expands Russian queries with English terms, and gives index text its terms in the other language."""

    def __init__(self, hand: dict[str, str] | None = None, mined: list[tuple[str, str]] | None = None):
        self.words: dict[str, str] = {}  # Russian stem -> English terms
        for ru, en in (hand or {}).items():
            for stem in tokenize(str(ru)):
                self.words.setdefault(stem, str(en))
        self.reverse: dict[str, str] = {}  # English stem -> Russian words (for index text)
        for ru, en in (hand or {}).items():
            for stem in tokenize(str(en)):
                self.reverse.setdefault(stem, str(ru))
        self.phrases: list[tuple[frozenset[str], frozenset[str], str, str]] = []  # (ru stems, en stems, ru, en)
        for ru, en in mined or []:
            ru_stems, en_stems = frozenset(tokenize(ru)), frozenset(tokenize(en))
            if len(ru_stems) == 1 and next(iter(ru_stems)) in self.words:
                continue  # a hand entry wins over a mined single word
            if ru_stems and en_stems:
                self.phrases.append((ru_stems, en_stems, ru, en))
        self.mined = list(mined or [])

    @classmethod
    def load(cls, settings) -> "Glossary":
        """The hand list from settings.retrieval.glossary and the pairs the last ingest mined from the atlas."""
        path = settings.path(settings.retrieval.glossary)
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
        mined_path = settings.data_dir / MINED
        mined = json.loads(mined_path.read_text(encoding="utf-8")) if mined_path.is_file() else []
        return cls((data or {}).get("terms") or {}, [tuple(p) for p in mined])

    @staticmethod
    def hand_key(settings) -> str:
        """A short hash of the hand list: atlas chunks carry its translations, so a change re-chunks the atlas."""
        path = settings.path(settings.retrieval.glossary)
        return hashlib.sha256(path.read_bytes() if path.is_file() else b"").hexdigest()[:8]

    def expand(self, query: str) -> str:
        """English terms for the Russian words and mined phrases of `query`.

        Example: 'Сколько параметров?' -> 'how many much parameters'.
        """
        toks = tokenize(query)
        have = set(toks)
        out = [self.words[t] for t in toks if t in self.words]
        out += [en for ru_stems, _, _, en in self.phrases if ru_stems <= have]
        return " ".join(dict.fromkeys(out))

    def english(self, text: str) -> str:
        """What `expand` adds, for index text: an English-only embedder then reads Russian passages too."""
        return self.expand(text)

    def both(self, text: str) -> str:
        """Terms in the other language for index text: English for its Russian, Russian for its English.

        Example: 'Инференс и деплой: vLLM (Fast Inference Engines)' -> 'inference ... инференс ...'.
        """
        toks = tokenize(text)
        have = set(toks)
        out = [self.expand(text)]
        out += [self.reverse[t] for t in toks if t in self.reverse and not _CYR.search(t)]
        out += [ru for _, en_stems, ru, _ in self.phrases if en_stems <= have]
        return " ".join(dict.fromkeys(o for o in out if o))


def save_mined(settings, pairs: list[tuple[str, str]]) -> None:
    path = settings.data_dir / MINED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([list(p) for p in pairs], ensure_ascii=False, indent=0), encoding="utf-8")


def load_hand(path: Path) -> dict[str, str]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return (data or {}).get("terms") or {}

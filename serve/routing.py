"""Which documents a question names, and a top-k that holds a few sections of each document unless it is named.

The naming terms come from the index itself: each document's title and section headings, with their glossary
translations, keeping only the terms no other document's title or headings use ('атлас', 'stack', 'заключение'),
and that few documents' texts use (so 'about' in 'LLM about LLM' names nothing).
"""

from __future__ import annotations

import re

import numpy as np

from ingest.glossary import Glossary
from ingest.keyword import tokenize

_NUMBERED = re.compile(r"^\d+(?:\.\d+)*\.?$")


def _heading_terms(text: str, glossary: Glossary) -> set[str]:
    """Stems of a title or heading, of its hyphenated words' parts, and of its translations.

    Example: 'Заключение' -> {'заключен', 'conclus'}; 'Интеллект-карта' -> {'интеллект-карт', 'интеллект', 'карт', ...}.
    """
    terms = {t for t in tokenize(text) + tokenize(text.replace("-", " ")) if not _NUMBERED.match(t)}
    return terms | set(tokenize(glossary.both(text)))


def one_word_names(doc_id: str, title: str) -> set[str]:
    """The stems a document goes by when they are one word: its id, and its title's head before ':'.

    Example: ('lima', 'LIMA: Less Is More for Alignment') -> {'lima'}; ('gpt3-icl', 'Language Models are …') -> set().
    """
    candidates = [doc_id, title.split(":")[0] if ":" in title else ""]
    return {stems[0] for stems in map(tokenize, candidates) if len(stems) == 1}


class Router:
    """Which atlas documents a question names: by a word of the title ('атлас', 'atlas'), or by two words of one
    heading (one when it has one: 'conclusion', 'stack'), in either language; and which of their sections it names,
    by the same rule. Paper cards are not routed: their titles' words ('reward', 'feedback', 'efficient') are what
    questions about other cards say too."""

    def __init__(self, meta: dict[str, dict], glossary: Glossary, texts: dict[str, str] | None = None,
                 max_doc_share: float = 0.25, kinds: tuple[str, ...] = ("atlas",)):
        titles: dict[str, str] = {}
        headings: dict[str, set[str]] = {}
        everywhere: dict[str, set[str]] = {}  # doc -> the headings every one of its chunks sits under (its title's)
        vocab: dict[str, set[str]] = {}  # doc -> the stems of its texts
        stems: dict[str, set[str]] = {}  # chunk -> the stems of its text
        chunks: dict[str, list[str]] = {}  # doc -> its chunk ids
        self.members: dict[tuple[str, str], set[str]] = {}  # (doc, heading) -> the chunks under it
        for cid, m in meta.items():
            doc = m.get("doc_id", "")
            titles[doc] = m.get("title", "")
            path = {h for h in (m.get("section") or "").split(" > ") if h}
            headings.setdefault(doc, set()).update(path)
            for h in path:
                self.members.setdefault((doc, h), set()).add(cid)
            everywhere[doc] = everywhere[doc] & path if doc in everywhere else path
            stems[cid] = set(tokenize((texts or {}).get(cid, "")))
            chunks.setdefault(doc, []).append(cid)
            vocab.setdefault(doc, set()).update(stems[cid])
        spread: dict[str, int] = {}
        for ws in vocab.values():
            for w in ws:
                spread[w] = spread.get(w, 0) + 1
        common = {w for w, n in spread.items() if n > max(1, max_doc_share * len(vocab))}
        owners: dict[str, set[str]] = {}
        for doc in titles:
            for h in {titles[doc], *headings[doc]}:
                for t in _heading_terms(h, glossary):
                    owners.setdefault(t, set()).add(doc)
        distinct = {t for t, docs in owners.items() if len(docs) == 1 and t not in common}
        routed = {doc for doc, m in ((m.get("doc_id", ""), m) for m in meta.values()) if m.get("kind") in kinds}
        # A title word names its document alone only when the glossary gives it in both languages ('atlas' and
        # 'атлас'); one without a translation ('LLM') is what questions about anything say.
        self.title_terms = {d: {t for w in titles[d].split() if glossary.both(w) for t in _heading_terms(w, glossary)} & distinct
                            for d in routed}
        # Each half of a heading ('Fine-Tuning Stack — архитектура инструментов') as its words' terms; a half of one
        # word names alone only when, like a title word, the glossary gives it in both languages ('LLM' does not).
        self.heading_terms: dict[str, list[tuple[str, list[set[str]]]]] = {d: [] for d in routed}
        for d in routed:
            for heading, part in ((h, p) for h in sorted(headings[d]) for p in h.split(" — ")):
                words = {w: ts for w in part.split() if (ts := _heading_terms(w, glossary) & distinct)}
                unique = list({frozenset(ts): ts for ts in words.values()}.values())
                if len(unique) > 1 or any(glossary.both(w) for w in words):
                    self.heading_terms[d].append((heading, unique))
        self.everywhere = everywhere
        # A heading's own words: those its document's text never says outside the heading's chunks. One of them (or
        # its translation, not its hyphenated parts) names the heading alone: 'интеллект-карта' names '4.1.
        # Интеллект-карта выбора метода'; 'подходов' ('approach') does not name '1. Эволюция подходов'.
        self.own: dict[tuple[str, str], set[str]] = {}
        for d in routed:
            for heading in headings[d] - everywhere[d]:
                inside = self.members[(d, heading)]
                outside = set().union(*(stems[c] for c in chunks[d] if c not in inside))
                for w in heading.replace(" — ", " ").split():
                    whole = set(tokenize(w))
                    if whole and not whole & outside:
                        parts = set(tokenize(w.replace("-", " "))) - whole
                        self.own.setdefault((d, heading), set()).update((_heading_terms(w, glossary) & distinct) - parts)
        # Other documents' one-word names (their id, or a title's head before ':'), kept per routed document when its
        # text never says them: 'the LIMA paper's conclusion' is not about the atlas, whose text has no 'LIMA'.
        self.foreign = {d: {n for doc in titles if doc != d for n in one_word_names(doc, titles[doc])} - vocab.get(d, set())
                        for d in routed}

    @staticmethod
    def _tokens(query: str) -> set[str]:
        return set(tokenize(re.sub(r"['’]s\b", "", query)))  # "the atlas's table" names the atlas

    def _headings(self, doc: str, toks: set[str]) -> set[str]:
        return {h for h, words in self.heading_terms[doc]
                if sum(bool(toks & ts) for ts in words) >= min(2, len(words)) or toks & self.own.get((doc, h), set())}

    def _by_heading(self, doc: str, toks: set[str]) -> set[str]:
        """The headings of `doc` a question names, unless it names, instead of `doc`'s title, a document `doc` never
        mentions."""
        if toks & self.foreign.get(doc, set()) and not toks & self.title_terms[doc]:
            return set()
        return self._headings(doc, toks)

    def named(self, query: str) -> set[str]:
        """Example: 'Какие базы перечислены в стеке атласа?' -> {'atlas'}; 'Какой тип данных подходит?' -> set();
        'What is the conclusion of the LIMA paper?' -> set() (a heading's word, but the atlas never mentions LIMA)."""
        toks = self._tokens(query)
        return {d for d in self.title_terms if toks & self.title_terms[d] or self._by_heading(d, toks)}

    def named_sections(self, query: str) -> set[tuple[str, str]]:
        """The (document, heading) pairs a question names, leaving out the headings every chunk of a document sits
        under (its title's). Example: 'Что в заключении атласа названо памятью?' -> {('atlas', '🏁 9. Заключение — …')}."""
        toks = self._tokens(query)
        return {(d, h) for d in self.title_terms for h in self._by_heading(d, toks) - self.everywhere.get(d, set())}


def section_key(meta: dict) -> tuple[str, str]:
    """A table row, its table and the section's text are one section. Example: {'doc_id': 'a', 'section': 'S'} -> ('a', 'S')."""
    return meta.get("doc_id", ""), meta.get("section") or ""


def cap_sections(ranked: list[str], meta: dict[str, dict], k: int, per_doc: int, exempt: set[str]) -> list[str]:
    """The first k ids, passing over any that would bring a third section of one document (`exempt` documents
    excepted); when too few remain, the passed-over ones fill up in order.

    Example: ids from sections a1, a2, a3, b1 with per_doc=2, k=3 -> a1, a2, b1.
    """
    taken: list[str] = []
    passed: list[str] = []
    sections: dict[str, set[str]] = {}
    for cid in ranked:
        if len(taken) >= k:
            break
        doc, sec = section_key(meta[cid])
        seen = sections.setdefault(doc, set())
        if doc not in exempt and sec not in seen and len(seen) >= per_doc:
            passed.append(cid)
            continue
        seen.add(sec)
        taken.append(cid)
    return taken + passed[: k - len(taken)]


def mmr(ranked: list[str], scores: dict[str, float], vectors: dict[str, np.ndarray], k: int, lam: float) -> list[str]:
    """Maximal marginal relevance over the fused candidates: relevance (scores scaled to 0..1) against the
    greatest cosine to a passage already chosen.

    Example: two near-identical best passages and a different third, k=2, lam=0.5 -> the best and the third.
    """
    if not ranked:
        return []
    top = max(scores[c] for c in ranked) or 1.0
    rel = {c: scores[c] / top for c in ranked}
    chosen: list[str] = []
    pool = list(ranked)
    while pool and len(chosen) < k:
        def gain(c: str) -> float:
            sim = max((float(vectors[c] @ vectors[o]) for o in chosen), default=0.0)
            return lam * rel[c] - (1 - lam) * sim
        best = max(pool, key=gain)
        chosen.append(best)
        pool.remove(best)
    return chosen

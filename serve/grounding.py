"""Answer-time grounding: pick the passage sentences that matter, check generated sentences, quote when needed."""

from __future__ import annotations

import copy
import math
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ingest.keyword import shared_words, tokenize

from .prompt import split_sentences
from .retrieval import Passage, is_russian

_CITE = re.compile(r"\[(\d+)\]")
MIN_SHARED_TOKENS = 3  # a sentence must state something a passage states, not just echo one word
_META = re.compile(r"^(Authors:|Термины:|Method:|Метод:)")  # card headers: true, but never an answer
_INTRO = re.compile(r":(?:\s+1\.)?$")  # 'The paper defines three settings:': it announces a list, quoted alone it says nothing


@dataclass
class Sentence:
    n: int  # 1-based passage number
    text: str
    vec: np.ndarray
    tokens: set[str]
    russian: bool = False
    asked: frozenset[str] = frozenset()  # the question's tokens this sentence holds (keyword.shared_words)


def _decimal(number: str) -> str:
    """A Russian decimal comma as a point. Example: '0,1' -> '0.1' (thousands were already joined: '10,000' -> '10000')."""
    return number.replace(",", ".")


def _latin(text: str) -> list[str]:
    """The Latin-script terms and the figures of a (Russian) sentence, a decimal comma as a point.
    Example: 'Обучаются смещения (bias), 0,1% у BERT.' -> ['bias', '0.1', 'BERT.'] (tokenize drops the point)."""
    return re.findall(r"[A-Za-z][\w.\-]*|\d+(?:[.,]\d+)*", re.sub(r"(?<=\d),(?=\d{1,2}\b)", ".", text))


def overlap(a: set[str], b: set[str]) -> float:
    """Share of a's tokens found in b. Example: ({'lora', 'rank'}, {'lora'}) -> 0.5."""
    return len(a & b) / len(a) if a else 0.0


class SentenceVectors:
    """Passage sentences' vectors, remembered (LRU, `size` sentences): each retrieved passage used to be embedded
    again, sentence by sentence, for every question that retrieved it."""

    def __init__(self, embedder, size: int = 20000):
        self.embedder, self.size = embedder, size
        self._vecs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            known = {t: self._vecs[t] for t in texts if t in self._vecs}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:  # embedded outside the lock: other questions' cached sentences need not wait
            known.update(zip(missing, self.embedder.encode(missing)))
        with self._lock:
            for t in dict.fromkeys(texts):
                self._vecs[t] = known[t]
                self._vecs.move_to_end(t)
            while len(self._vecs) > self.size:
                self._vecs.popitem(last=False)
        return np.asarray([known[t] for t in texts], dtype=np.float32)


_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def sentence_vectors(embedder) -> SentenceVectors:
    """The one sentence-vector cache of an embedder."""
    if embedder not in _CACHES:
        _CACHES[embedder] = SentenceVectors(embedder)
    return _CACHES[embedder]


class Grounder:
    """Holds one question's passage sentences with their vectors; every check reuses them."""

    def __init__(self, embedder, question: str, passages: list[Passage], search_query: str | None = None,
                 translate: Callable[[str], str] | None = None):
        self.embedder = embedder
        self.translate = translate  # Russian text -> its English glossary terms, to check it against English passages
        texts, owners = [], []
        self.computed = {n for n, p in enumerate(passages, 1) if p.kind == "calculator"}  # estimates, not documents
        for n, p in enumerate(passages, 1):
            for s in split_sentences(p.text):
                texts.append(s)
                owners.append(n)
        self.qvec = embedder.encode([search_query or question])[0]
        svecs = sentence_vectors(embedder).encode(texts) if texts else []
        self.qtokens = set(tokenize(search_query or question))
        self.question_tokens = set(tokenize(question))
        asked = self.qtokens | self.question_tokens
        self.sentences = [Sentence(n, t, v, toks, is_russian(t), shared_words(asked, toks))
                          for n, t, v in zip(owners, texts, svecs) for toks in [set(tokenize(t))]]
        self._weigh()

    def subset(self, passages: list[Passage]) -> "Grounder":
        """The same grounder over trimmed or fewer passages, reusing the vectors already computed (no re-encoding)."""
        keep = {(n, t) for n, p in enumerate(passages, 1) for t in split_sentences(p.text)}
        other = copy.copy(self)
        other.sentences = [s for s in self.sentences if (s.n, s.text) in keep]
        other._weigh()
        return other

    def _weigh(self) -> None:
        """idf of the question's tokens over the sentences held."""
        df: dict[str, int] = {}
        for s in self.sentences:
            for t in s.asked:
                df[t] = df.get(t, 0) + 1
        n = len(self.sentences) + 1
        self.idf = {t: math.log(1 + n / df.get(t, 0.5)) for t in self.qtokens | self.question_tokens}
        # Non-header sentences, best answer first; `rank` gives each one's place (0 = the best).
        self.ranked = sorted((s for s in self.sentences if not _META.match(s.text)), key=self.relevance, reverse=True)
        self.rank = {id(s): i for i, s in enumerate(self.ranked)}

    def relevance(self, s: Sentence) -> float:
        """How well a passage sentence answers the question: cosine plus idf-weighted keyword overlap,
        with a small prior for passages the retriever ranked higher."""
        # A Russian sentence can hold only the question's own words: the English glossary terms of the search query
        # are there for English passages, and counting them would sink every Russian sentence's keyword share.
        asked = self.question_tokens if s.russian else self.qtokens
        total = sum(self.idf[t] for t in asked) or 1.0
        keyword = sum(self.idf[t] for t in asked & s.asked) / total
        return float(s.vec @ self.qvec) + 0.7 * keyword + 0.05 / s.n

    def best_relevance(self) -> float:
        return max((self.relevance(s) for s in self.sentences), default=0.0)

    def top_sentences(self, k: int, per_passage: int | None = None, skip: set[int] = frozenset()) -> list[Sentence]:
        """The k most relevant sentences worth quoting (never a list's bare intro), at most per_passage from one passage."""
        out, per = [], {}
        for s in self.ranked:
            if s.n in skip or (per_passage and per.get(s.n, 0) >= per_passage) or _INTRO.search(s.text):
                continue
            if any(s.text == o.text for o in out):
                continue
            out.append(s)
            per[s.n] = per.get(s.n, 0) + 1
            if len(out) >= k:
                break
        return out

    def support(self, sentence: str, min_overlap: float, min_similarity: float,
                top: int | None = None) -> tuple[bool, int, float]:
        """(supported, best passage n, score) for one generated sentence, against its cited passages if it cites any.

        With `top`, the passage sentence it restates must also be one of the `top` most relevant to the question:
        a true sentence about something else does not answer it. A sentence is never checked against passages it
        did not cite: measured on the dev set, re-citing the Gemma adapter's failed sentences to whichever passage
        supported them passed 4 more answers, all 4 wrong (the cited passage is part of the check).
        """
        cited = {int(c) for c in _CITE.findall(sentence)}
        pool = [s for s in self.sentences if not cited or s.n in cited] or self.sentences
        clean = _CITE.sub("", sentence).strip()
        own = set(tokenize(clean))
        if not pool or not own:
            return False, 0, 0.0
        # A Russian sentence meets an English passage sentence through its English view (never its Russian words).
        russian = self.translate is not None and is_russian(clean)
        views = {False: (own, self.embedder.encode([clean])[0]),
                 True: self._english_view(clean) if russian and any(not s.russian for s in pool) else None}

        def across(s: Sentence) -> bool:
            return russian and not s.russian

        def score(s: Sentence) -> float:
            toks, vec = views[across(s)]
            # Across languages the English-only embedder cannot judge meaning: only the shared terms count.
            return overlap(toks, s.tokens) if across(s) else max(overlap(toks, s.tokens), float(s.vec @ vec))

        best = max(pool, key=score)
        toks, vec = views[across(best)]
        ov, sim = overlap(toks, best.tokens), float(best.vec @ vec)
        # A figure the passage does not state is a hallucination, however similar the rest reads.
        numbers = {_decimal(t) for t in toks if t[0].isdigit()}
        passage_numbers = {_decimal(t) for s in pool if s.n == best.n for t in s.tokens if t[0].isdigit()}
        # It must state something the passage states beyond the question's own words (an echo says nothing).
        # (Across languages the question's words are its English glossary terms, which the search query holds.)
        asked = self.question_tokens | self.qtokens if across(best) else self.question_tokens
        novel = (toks - asked) & best.tokens
        if numbers - passage_numbers or len(toks & best.tokens) < MIN_SHARED_TOKENS or len(novel) < 2:
            return False, best.n, 0.0
        if top is not None and self.rank.get(id(best), top) >= top:
            return False, best.n, 0.0
        if across(best):
            # Across languages the English-only embedder cannot judge meaning (a bag of glossary terms against an
            # English sentence scores about 0.4 even when it says the same): the terms and figures must carry it.
            return ov >= min_overlap, best.n, ov
        return (ov >= min_overlap and sim >= min_similarity), best.n, min(ov, sim)

    def backed_by_quotes(self, sentence: str, quotes: dict[int, list[str]], top: int | None = None) -> tuple[bool, int]:
        """(stands, passage n) for a Russian sentence over English passages, which the English-only check reads only
        through its terms: it stands on the model's verified quotes when it cites only quoted passages, a quote from
        each restates one of the `top` sentences that best answer the question, and it states no figure or Latin
        term those passages lack. The quotes are shown with the answer, so the reader sees what it rests on.

        Example: 'Обучаются только смещения (bias) [2].' with the verified quote 'BitFit trains only the bias terms.'
        from [2] (a top sentence) -> (True, 2); the same sentence with 'GPT-3' in it, or citing an unquoted [3] -> (False, 0).
        """
        cited = {int(c) for c in _CITE.findall(sentence)}
        clean = _CITE.sub("", sentence).strip()
        if not cited or not cited <= set(quotes) or self.translate is None or not is_russian(clean):
            return False, 0
        norm = lambda t: " ".join(t.split())  # noqa: E731
        for n in cited:
            said = [norm(q) for q in quotes[n]]
            if not any((top is None or self.rank.get(id(s), top) < top) and any(norm(s.text) in q or q in norm(s.text)
                                                                                  for q in said)
                       for s in self.sentences if s.n == n):
                return False, 0
        theirs = {_decimal(t) for s in self.sentences if s.n in cited for t in s.tokens}
        stated = {_decimal(t) for t in tokenize(" ".join(_latin(clean)))}
        return not (stated - theirs), min(cited)

    def _english_view(self, clean: str) -> tuple[set[str], np.ndarray]:
        """A Russian sentence as an English sentence can share it: its Latin terms, its figures (decimal comma as a
        point) and its English glossary terms. Example: 'Обучаются только смещения (bias), 0,1%.' -> {'bias', '0.1',
        'trainable', ...}."""
        latin = _latin(clean)
        english = " ".join(dict.fromkeys(latin + self.translate(clean).split()))
        return set(tokenize(english)), self.embedder.encode([english or clean])[0]

    def extractive(self, k: int = 2, within: float | None = None, per_passage: int | None = None) -> str:
        """Quote the k passage sentences that best answer the question, each with its [n]; with `within`, only
        those whose relevance is at most that far below the best one (a distant runner-up answers something else);
        with `per_passage`, at most that many from one passage. The best comes first: it is what was asked.

        A calculator's estimate is quoted only when the documents give nothing: a quote states published facts, and
        the model may still cite the estimate when it writes the answer itself.
        """
        top = self.top_sentences(k, per_passage, skip=self.computed) or self.top_sentences(k, per_passage)
        if within is not None and top:
            best = self.relevance(top[0])
            top = [s for s in top if self.relevance(s) >= best - within]
        return " ".join(f"{s.text} [{s.n}]" for s in top)


def trim_passage(p: Passage, grounder: "Grounder", n: int, keep: int = 4) -> Passage:
    """The passage cut to its `keep` most relevant sentences, in their original order (what the model then reads)."""
    mine = [s for s in grounder.sentences if s.n == n]
    if len(mine) <= keep:
        return p
    chosen = {id(s) for s in sorted(mine, key=grounder.relevance, reverse=True)[:keep]}
    text = "\n".join(s.text for s in mine if id(s) in chosen)  # one per line: unpunctuated ones stay apart
    return Passage(p.id, p.doc_id, p.title, p.section, p.source, text, p.score, p.language, p.kind)


def reading(embedder, question: str, passages: list[Passage], search_query: str | None = None,
            keep: int = 4, translate: Callable[[str], str] | None = None) -> tuple[list[Passage], Grounder]:
    """What the model reads: each passage trimmed to its `keep` most relevant sentences, and the grounder over them.

    The server and the fine-tuning data builder both call this, so training prompts are the prompts served.
    """
    grounder = Grounder(embedder, question, passages, search_query=search_query, translate=translate)
    trimmed = [trim_passage(p, grounder, n, keep) for n, p in enumerate(passages, 1)]
    return trimmed, grounder.subset(trimmed)


def split_generated(text: str) -> list[str]:
    """Example: 'LoRA trains BA [1]. It is cheap.' -> ['LoRA trains BA [1].', 'It is cheap.']."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p.strip() for p in parts if p.strip()]

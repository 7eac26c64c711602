"""The model's streamed reply -> the grounded answer: quotes become checked evidence, sentences pass one at a time,
and generation stops as soon as the answer is bound to fall back to quoting the passages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .evidence import Evidence, answer_repeated, answer_started, parse_answer, quote_holds
from .grounding import Grounder, split_generated
from .prompt import EXTRACTIVE_LEAD, NO_ANSWER
from .retrieval import Passage

_CITES_ONLY = re.compile(r"(\[\d+\]\s*)+")


def checked_evidence(quotes: list[Evidence], passages: list[Passage]) -> tuple[list[Evidence], int]:
    """(quotes that hold verbatim in a passage, how many did not). A quote is kept with the passage it names when it
    holds there, else with the first passage that holds it (a small model often copies the right sentence under the
    wrong number, or none).

    Example: [Evidence(2, 'LoRA freezes W.'), Evidence(2, 'made up')] over passages ['Intro. LoRA freezes W.', 'x']
    -> ([Evidence(1, 'LoRA freezes W.')], 1).
    """
    kept: list[Evidence] = []
    dropped = 0
    for q in quotes:
        named = q.index is not None and 1 <= q.index <= len(passages) and quote_holds(q.text, passages[q.index - 1].text)
        n = q.index if named else next((i for i, p in enumerate(passages, 1) if quote_holds(q.text, p.text)), None)
        if n is None:
            dropped += 1
        elif not any(k.index == n and k.text == q.text for k in kept):
            kept.append(Evidence(n, q.text))
    return kept, dropped


@dataclass
class Judged:
    """The running tally of one answer's sentences against the grounding check."""

    grounder: Grounder
    llm: object  # LLMSettings: the grounding thresholds
    supported: list[float] = field(default_factory=list)
    total: int = 0
    said_no: bool = False
    emitted: bool = False
    quotes: dict[int, list[str]] = field(default_factory=dict)  # passage n -> the model's verified quotes from it
    quote_backed: int = 0  # sentences that stood on those quotes (Russian over English passages)

    def sentence(self, text: str) -> str | None:
        """The sentence as it may be shown (with its [n]), or None when it fails the check or declines."""
        low = text.lower()
        if any(no.lower()[:30] in low for no in NO_ANSWER.values()) or "do not contain" in low or "нет ответа" in low:
            self.said_no = True
            return None
        self.total += 1
        llm = self.llm
        ok, n, score = self.grounder.support(text, llm.grounding_overlap, llm.grounding_similarity,
                                             llm.grounding_top_sentences)
        if not ok and self.quotes:
            ok, n = self.grounder.backed_by_quotes(text, self.quotes, llm.grounding_top_sentences)
            self.quote_backed += ok
        if not ok:
            return None
        self.supported.append(score)
        return text if re.search(r"\[\d+\]", text) else f"{text.rstrip()} [{n}]"

    @property
    def share(self) -> float:
        return len(self.supported) / self.total if self.total else 0.0

    @property
    def declined(self) -> bool:
        """The model said it has no answer before writing any sentence that passed."""
        return self.said_no and not self.emitted

    def doomed(self) -> bool:
        """Whether the answer can no longer stand as generated: the model declined before saying anything, or the
        share of supported sentences so far is under grounding_min_supported (the same rule the end applies)."""
        return self.declined or (self.total > 0 and self.share < self.llm.grounding_min_supported)


def extractive_quotes(grounder: Grounder, llm) -> str:
    """The extractive answer's quotes, as the settings (LLMSettings) size them."""
    return grounder.extractive(llm.extractive_sentences, llm.extractive_within, llm.extractive_per_passage)


def grounded_answer(stream: Iterator[str], grounder: Grounder, passages: list[Passage], llm, language: str,
                    verdict: dict, again: Callable[[], Iterator[str]] | None = None) -> Iterator[str]:
    """Answer text in pieces from the model's stream: each sentence as soon as it passes the check, never a quote.

    Quotes (`##begin_quote## … ##end_quote## [n]`) are held back and checked verbatim against their passage; the
    generation is closed as soon as `Judged.doomed()`, and the passages are quoted instead. When the model declines a
    question retrieval is confident about (best relevance at least `refusal_bar`), `again()` (when given) is asked
    once for a second stream, the prompt without its way out, and read the same way. `verdict` is filled at the end:
    mode, supported share, evidence, evidence_dropped, stopped_early, quote_backed (sentences that stood on verified
    quotes), asked_again.
    """
    judged, read = Judged(grounder, llm), Read()
    yield from _read(stream, judged, passages, read)
    # retrieval is sure enough that the model's "no" does not stand
    overruled = judged.declined and grounder.best_relevance() >= refusal_bar(llm, language)
    asked_again = overruled and again is not None
    if asked_again:
        judged, read = Judged(grounder, llm), Read()
        yield from _read(again(), judged, passages, read)
    evidence, dropped = checked_evidence(parse_answer(read.raw)[0], passages)
    found = {"evidence": [e.as_dict() for e in evidence], "evidence_dropped": dropped, "stopped_early": read.stopped,
             "quote_backed": judged.quote_backed, "asked_again": asked_again}
    # A small model declines answerable questions too; its "no" stands only when retrieval is not confident.
    if judged.declined and not overruled:
        verdict.update(mode="refused", supported=0.0, **found)
        yield NO_ANSWER.get(language, NO_ANSWER["en"])
    elif not judged.emitted or judged.share < llm.grounding_min_supported:
        verdict.update(mode="extractive", supported=round(judged.share, 3), **found)
        lead = " " if judged.emitted else EXTRACTIVE_LEAD.get(language, "")
        yield lead + extractive_quotes(grounder, llm)
    else:
        verdict.update(mode="generated", supported=round(judged.share, 3), **found)


def refusal_bar(llm, language: str) -> float:
    """The best relevance from which retrieval is confident enough to overrule the model's "no answer"."""
    bar = llm.model_refusal_below_ru if language == "ru" else None
    return llm.model_refusal_below if bar is None else bar


@dataclass
class Read:
    raw: str = ""  # all the model wrote
    stopped: bool = False  # closed early: the answer was bound to turn extractive


def _read(stream: Iterator[str], judged: Judged, passages: list[Passage], read: Read) -> Iterator[str]:
    """One stream through the check: the sentences that pass, as they are finished; `read` keeps the raw text."""
    done, marked = 0, False

    def let_through(sentences: list[str]) -> Iterator[str]:
        for s in sentences:
            out = judged.sentence(s)
            if out:
                yield (" " if judged.emitted else "") + out
                judged.emitted = True
            if judged.doomed():
                return

    try:
        for delta in stream:
            read.raw += delta
            if not marked and answer_started(read.raw):
                marked, done = True, 0  # the answer proper starts here; text before the marker was quotes
                for e in checked_evidence(parse_answer(read.raw)[0], passages)[0]:
                    judged.quotes.setdefault(e.index, []).append(e.text)
            parts = split_generated(parse_answer(read.raw)[1])
            if len(parts) - 1 > done and not _CITES_ONLY.fullmatch(parts[-1]):
                yield from let_through(parts[done:-1])
                done = len(parts) - 1
                if judged.doomed():
                    read.stopped = True
                    break
            if answer_repeated(read.raw):
                break  # what follows a second <ANSWER>: is a loop, never read: the first answer is whole
        if not read.stopped:  # the last sentence had nothing after it to show it was finished
            yield from let_through(split_generated(parse_answer(read.raw)[1])[done:])
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()  # a generator engine stops generating here, not at max_tokens

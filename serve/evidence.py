"""The RAFT answer format: verbatim evidence quotes between markers, then the short answer; one home for both sides.

A target (and a tuned model's output) reads:

    ##begin_quote## LoRA freezes the pretrained weights. ##end_quote## [2]
    <ANSWER>: LoRA trains only the low-rank matrices A and B [2].

The fine-tuning data builder writes it with `format_answer`; the server reads it with `parse_answer`, checks each
quote verbatim against its passage, and returns the answer alone as the message content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BEGIN, END, ANSWER = "##begin_quote##", "##end_quote##", "<ANSWER>:"
# The marker as a small tuned model writes it, misspelt ones too: '<ANSWER>:', '[<ANSWER]:', '<ANSWER>'.
_ANSWER = re.compile(r"\[?<ANSWER\]?>?\]?:?")
_QUOTE = re.compile(re.escape(BEGIN) + r"\s*(.*?)\s*" + re.escape(END) + r"\s*(?:\[(\d+)\])?", re.S)


@dataclass
class Evidence:
    index: int | None  # the [n] the quote names; None when the model gave none
    text: str

    def as_dict(self) -> dict:
        return {"index": self.index, "text": self.text}


def format_answer(quotes: list[tuple[int, str]], answer: str) -> str:
    """Example: ([(2, 'LoRA freezes W.')], 'It trains A and B [2].') ->
    '##begin_quote## LoRA freezes W. ##end_quote## [2]\\n<ANSWER>: It trains A and B [2].'."""
    lines = [f"{BEGIN} {text.strip()} {END} [{n}]" for n, text in quotes]
    return "\n".join(lines + [f"{ANSWER} {answer.strip()}"])


def parse_answer(text: str) -> tuple[list[Evidence], str]:
    """(quotes, answer). Text without the answer marker is all answer, once any quotes are taken out.

    Example: '##begin_quote## A is B. ##end_quote## [1]\\n<ANSWER>: A is B [1].' -> ([Evidence(1, 'A is B.')], 'A is B [1].')
    """
    quotes = [Evidence(int(m.group(2)) if m.group(2) else None, m.group(1).strip()) for m in _QUOTE.finditer(text)]
    parts = _ANSWER.split(text)
    # Quotes are never answer text, wherever the model wrote them; nor is an unfinished one (generation cut inside it).
    # A second marker means the model started over (a small model loops): the answer is what came before it.
    answer = _QUOTE.sub("", parts[1] if len(parts) > 1 else parts[0]).split(BEGIN)[0]
    return quotes, answer.strip()


def answer_started(text: str) -> bool:
    """Whether streaming has reached the answer part: the marker has been written (the quotes come before it)."""
    return _ANSWER.search(text) is not None


def answer_repeated(text: str) -> bool:
    """Whether the model has begun a second answer: generation can stop, the first one is all that is read."""
    return len(_ANSWER.findall(text)) > 1


def quote_holds(quote: str, passage_text: str) -> bool:
    """A quote is evidence only if it appears verbatim in the passage, whitespace aside.

    Example: ('LoRA  freezes W.', 'Intro.\\nLoRA freezes W. More.') -> True.
    """
    norm = lambda s: " ".join(s.split())  # noqa: E731
    q = norm(quote)
    return bool(q) and q in norm(passage_text)

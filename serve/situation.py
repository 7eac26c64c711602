"""A user's description of their situation -> the chart's answers it implies, by the cue rules in the reviewed data."""

from __future__ import annotations

import re

from .advisor import Advisor
from .retrieval import is_russian


def infer(advisor: Advisor, text: str) -> dict[str, tuple[str, str]]:
    """{decision id: (yes|no, the words it was inferred from)} for the questions the text settles.

    The cues are regular expressions per node, language and answer in the chart's English file; the text's own
    language is tried first. A question whose yes and no cues both match is left for the user.
    Example (the atlas): 'one 24 GB GPU, a chat assistant' -> {'B': ('no', '24 GB'), 'J': ('yes', 'assistant')}
    """
    text = (text or "").strip()
    if not text:
        return {}
    order = ("ru", "en") if is_russian(text) else ("en", "ru")
    out: dict[str, tuple[str, str]] = {}
    for node in advisor.chart.answers:
        cues = (advisor.english.get(node) or {}).get("cues") or {}
        for lang in order:
            hits = {}
            for answer in ("yes", "no"):
                for pattern in (cues.get(lang) or {}).get(answer) or []:
                    m = re.search(pattern, text, re.I)
                    if m:
                        hits[answer] = m.group(0).strip()
                        break
            if len(hits) == 1:
                (answer, words), = hits.items()
                out[node] = (answer, words)
                break
            if hits:
                break  # both answers cued: ambiguous, ask
    return out


def infer_with_model(advisor: Advisor, text: str, engine, language: str) -> dict[str, tuple[str, str]]:
    """The rules' answers, then the model's yes/no/unknown for each question the rules left open."""
    from .engines import GenerationParams

    out = infer(advisor, text)
    for node in advisor.chart.answers:
        if node in out:
            continue
        question = advisor.text(node, language)
        messages = [
            {"role": "system", "content": "You read a user's situation and answer one question about it. "
                                          "Reply with one word: yes, no, or unknown (when the situation does not say)."},
            {"role": "user", "content": f"Situation: {text}\nQuestion: {question}\nAnswer (yes, no or unknown):"},
        ]
        reply = "".join(engine.stream(messages, GenerationParams(max_tokens=4, temperature=0.0))).strip().lower()
        word = re.match(r"[a-zа-яё]+", reply)
        key = {"yes": "yes", "да": "yes", "no": "no", "нет": "no"}.get(word.group(0) if word else "")
        if key:
            out[node] = (key, "the model")
    return out

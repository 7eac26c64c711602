"""The RAG prompt: numbered passages [1]..[k] with title and section, history, question; kept inside a token budget."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from .errors import BadRequest

from .retrieval import Passage

NO_ANSWER = {
    "en": "The passages do not contain the answer to this question.",
    "ru": "В найденных источниках нет ответа на этот вопрос.",
}
EXTRACTIVE_LEAD = {"en": "", "ru": "Из источников: "}  # before an answer quoted from the passages
LANGUAGE_NAMES = {"en": "English", "ru": "Russian"}

DECLINE = " If the passages do not contain the answer, reply exactly: \"{no_answer}\""
SYSTEM_RAG = (
    "You are ftatlas, an assistant for engineers who adapt large language models. Answer the question using only "
    "the numbered passages. Cite the passage you use as [n]. Answer in {language}, in one to three short sentences."
    + DECLINE
)
SYSTEM_BASE = (
    "You are ftatlas, an assistant for engineers who adapt large language models. Answer in {language}, "
    "in one to three short sentences."
)
CLIENT_SYSTEM = "The client adds these instructions; the rules above still apply:\n{text}"


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage, Markdown noise removed. Example: '- **A** is x. B is y' -> ['A is x.', 'B is y']."""
    # A Mermaid block is read through the edge sentences that follow it; other code keeps one line per sentence.
    text = re.sub(r"```mermaid.*?```", "", text, flags=re.S)
    text = re.sub(r"```\w*", "", text)
    out = []
    for line in text.splitlines():
        line = re.sub(r"^[\s│├└─↓]+", "", line)  # a text tree's glyphs: a quote says 'LoRA', not '├─ LoRA'
        line = re.sub(r"^\s*(?:[-*>]|\d+\.)\s+", "", line)
        line = re.sub(r"[*_`#]+", "", line).strip()
        if not line or set(line) <= set("|-: "):
            continue
        parts = re.split(r"(?<=[.!?])\s+(?=[A-ZА-ЯЁ0-9(\"«\U0001F300-\U0001FAFF])", line)  # an emoji opens one too
        out.extend(s.strip() for s in parts if len(s.strip()) > 2)
    return out


def format_passages(passages: list[Passage]) -> str:
    """Example: one passage 'LoRA' / 'LoRA > Results' / 'x' -> '[1] LoRA — Results\\nx'."""
    blocks = []
    for i, p in enumerate(passages, 1):
        tail = p.section.split(" > ")[-1] if p.section else ""
        head = f"{p.title} — {tail}" if tail and tail != p.title else p.title
        blocks.append(f"[{i}] {head}\n{p.text}")
    return "\n\n".join(blocks)


def build_messages(
    question: str,
    passages: list[Passage] | None,
    language: str,
    history: list[dict] | None = None,
    count_tokens: Callable[[str], int] | None = None,
    history_budget: int = 600,
    client_system: str = "",
) -> list[dict]:
    """Chat messages for the model. passages=None means closed-book (atlas-base).

    The same function builds the fine-tuning examples, so the adapter learns exactly this format. A client's own
    system message (already trimmed to its budget) follows the server's rules, which it cannot replace.
    """
    lang = LANGUAGE_NAMES.get(language, "English")
    if passages is None:
        system = SYSTEM_BASE.format(language=lang)
        user = question
    else:
        system = SYSTEM_RAG.format(language=lang, no_answer=NO_ANSWER.get(language, NO_ANSWER["en"]))
        user = f"Passages:\n\n{format_passages(passages)}\n\nQuestion: {question}"
    if client_system.strip():
        system += "\n\n" + CLIENT_SYSTEM.format(text=client_system.strip())
    messages = [{"role": "system", "content": system}]
    messages += trim_history(history or [], count_tokens, history_budget)
    messages.append({"role": "user", "content": user})
    return messages


def without_decline(messages: list[dict], language: str) -> list[dict]:
    """The same prompt with the system message's way out ("reply exactly: <no answer>") taken away: asked when a
    small model declines a question retrieval is confident about. Example: [system 'Answer. If the passages do not
    contain the answer, reply exactly: "…"', user q] -> [system 'Answer.', user q]."""
    decline = DECLINE.format(no_answer=NO_ANSWER.get(language, NO_ANSWER["en"]))
    return [{**m, "content": m["content"].replace(decline, "")} if m.get("role") == "system" else m for m in messages]


def trim_history(history: list[dict], count_tokens: Callable[[str], int] | None, budget: int) -> list[dict]:
    """The most recent turns that fit in `budget` tokens, oldest dropped first, whole turns only."""
    count = count_tokens or (lambda s: len(s) // 3 + 1)
    kept, used = [], 0
    for msg in reversed([m for m in history if m.get("role") in ("user", "assistant")]):
        cost = count(msg["content"]) + 4
        if used + cost > budget:
            break
        kept.insert(0, {"role": msg["role"], "content": msg["content"]})
        used += cost
    return kept


def load_history(path: Path) -> list[dict]:
    """Earlier turns of a conversation from a JSON file: a list of {role: user|assistant, content: text}.

    Example: '[{"role": "user", "content": "What is QLoRA?"}, {"role": "assistant", "content": "…"}]' -> those two
    turns. BadRequest names the file and the first thing wrong with it.
    """
    try:
        turns = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BadRequest(f"history file {path}: cannot read it ({e.strerror or e})") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"history file {path}: not valid JSON ({e})") from e
    if not isinstance(turns, list):
        raise BadRequest(f"history file {path}: expected a JSON list of {{role, content}} turns, got {type(turns).__name__}")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            raise BadRequest(f"history file {path}: turn {i} needs a role of 'user' or 'assistant'")
        if not isinstance(turn.get("content"), str) or not turn["content"].strip():
            raise BadRequest(f"history file {path}: turn {i} needs a non-empty text content")
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def trim_to_tokens(text: str, count_tokens: Callable[[str], int] | None, budget: int) -> str:
    """The start of `text` that fits in `budget` tokens, cut at a word. Example: ('one two three', len, 8) -> 'one two'."""
    count = count_tokens or (lambda s: len(s) // 3 + 1)
    text = text.strip()
    if budget <= 0:
        return ""
    while text and count(text) > budget:
        cut = max(1, int(len(text) * min(0.9, budget / count(text))))
        head = text[:cut]
        if not head[-1].isspace() and not text[cut].isspace() and len(head.split()) > 1:
            head = head.rsplit(None, 1)[0]  # a word cut in half is dropped
        text = head.rstrip()
    return text

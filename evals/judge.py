"""An LLM judge (any OpenAI-compatible model): RAGAS-style faithfulness and answer correctness, cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .backends import list_models, openai_client

MAX_STATEMENTS = 12
CORRECTNESS_WEIGHTS = (0.75, 0.25)  # RAGAS: factual F1, semantic similarity

STATEMENTS_PROMPT = """Break the answer to the question into short, self-contained factual statements.
Replace pronouns with the names they stand for. Reply with only a JSON list of strings.

Question: {question}
Answer: {answer}
Statements:"""

VERDICTS_PROMPT = """Context:
{context}

For each numbered statement, decide whether it can be directly inferred from the context above.
Reply with only a JSON list with one object per statement, like [{{"statement": 1, "verdict": 1}}], verdict 1 if it
can be inferred and 0 if it cannot.

Statements:
{statements}
Verdicts:"""


def parse_statements(text: str) -> list[str]:
    """The judge's statements: a JSON list of strings, else bulleted or numbered lines.

    Example: 'Sure: ["LoRA freezes W.", "B starts at zero."]' -> ['LoRA freezes W.', 'B starts at zero.'].
    """
    m = re.search(r"\[.*\]", text, re.S)
    if m:
        try:
            items = json.loads(m.group(0))
            if isinstance(items, list) and all(isinstance(s, str) for s in items):
                return [s.strip() for s in items if s.strip()][:MAX_STATEMENTS]
        except json.JSONDecodeError:
            pass
    bullet = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
    lines = [bullet.sub("", ln).strip() for ln in text.splitlines() if bullet.match(ln)]
    return [ln for ln in lines if ln][:MAX_STATEMENTS]


def sentences(text: str) -> list[str]:
    """Fallback statements: the sentences of a text. Example: 'A is B. C? D' -> ['A is B.', 'C?', 'D']."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()][:MAX_STATEMENTS]


def parse_verdicts(text: str, n: int) -> list[bool] | None:
    """n verdicts from the judge's reply; missing ones count as unsupported; None when it gave none at all.

    Example: ('[{"statement": 1, "verdict": 1}, {"statement": 2, "verdict": 0}]', 3) -> [True, False, False].
    """
    found = re.findall(r'"verdict"\s*:\s*"?(1|0|yes|no|true|false)', text, re.I)
    if not found:
        found = [v for _, v in re.findall(r"^\s*(\d+)\W+(yes|no|1|0)\b", text, re.I | re.M)]
    if not found:
        return None
    verdicts = [v.lower() in ("1", "yes", "true") for v in found[:n]]
    return verdicts + [False] * (n - len(verdicts))


def factual_f1(tp: int, fp: int, fn: int) -> float | None:
    """RAGAS factual F1 = TP / (TP + (FP + FN) / 2). Example: (2, 1, 1) -> 0.6667; (0, 0, 0) -> None."""
    if tp + fp + fn == 0:
        return None
    return tp / (tp + 0.5 * (fp + fn))


class Judge:
    """Asks the judge model; every reply is cached under the hash of (model, prompt), so reruns repeat it for free."""

    def __init__(self, endpoint: str, cache_dir: Path, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0, max_tokens: int = 256):
        self.client = openai_client(endpoint, api_key, timeout_s)
        self.endpoint = endpoint
        self.model = model or list_models(self.client, endpoint)[0]
        self.cache_dir = Path(cache_dir)
        self.max_tokens = max_tokens
        self.calls = 0  # replies fetched from the model, not the cache

    def ask(self, prompt: str, max_tokens: int | None = None) -> str:
        max_tokens = min(max_tokens or self.max_tokens, self.max_tokens)
        key = hashlib.sha256(json.dumps([self.model, max_tokens, prompt]).encode()).hexdigest()
        path = self.cache_dir / key[:2] / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        resp = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=max_tokens, temperature=0.0)
        self.calls += 1
        reply = resp.choices[0].message.content or ""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": self.model, "prompt": prompt, "reply": reply}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)  # a half-written entry is never read
        return reply

    def statements(self, question: str, answer: str) -> list[str]:
        return parse_statements(self.ask(STATEMENTS_PROMPT.format(question=question, answer=answer))) or sentences(answer)

    def verdicts(self, statements: list[str], context: str) -> list[bool] | None:
        numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(statements, 1))
        # ~20 tokens per {"statement": n, "verdict": v}: a rambling judge stops soon after the verdicts
        reply = self.ask(VERDICTS_PROMPT.format(context=context, statements=numbered), 16 + 24 * len(statements))
        return parse_verdicts(reply, len(statements))

    def faithfulness(self, question: str, answer: str, contexts: list[str]) -> float | None:
        """Share of the answer's statements the retrieved passages support (RAGAS faithfulness)."""
        claims = self.statements(question, answer)
        verdicts = self.verdicts(claims, "\n\n".join(contexts)) if claims and contexts else None
        return sum(verdicts) / len(verdicts) if verdicts else None

    def answer_correctness(self, question: str, answer: str, reference: str, similarity: float | None) -> float | None:
        """RAGAS answer correctness: 0.75 x factual F1 against the reference + 0.25 x semantic similarity."""
        claims, truths = self.statements(question, answer), self.statements(question, reference)
        supported = self.verdicts(claims, reference) if claims else []
        covered = self.verdicts(truths, answer) if truths else []
        if supported is None or covered is None:
            return None
        f1 = factual_f1(sum(supported), len(supported) - sum(supported), len(covered) - sum(covered))
        if f1 is None:
            return None
        w_f1, w_sim = CORRECTNESS_WEIGHTS
        return w_f1 * f1 + w_sim * (similarity or 0.0)

    def score(self, question: str, answer: str, reference: str, contexts: list[str], similarity: float | None) -> dict:
        return {"faithfulness": self.faithfulness(question, answer, contexts),
                "answer_correctness": self.answer_correctness(question, answer, reference, similarity)}

"""Preference pairs for DPO, in TRL's conversational format: from users' corrections and ratings in the answer log,
and from the product's own grounding check over sampled answers. No question of the dev or held-out set gets in."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from serve.answer import grounded_answer
from serve.answer_log import AnswerLog, log_path
from serve.bases import served_adapter
from serve.promoted import serving_settings

from .errors import FinetuneError
from .overlap import EvalGuard, normalise
from .questions import Question, load_questions

SOURCES = ("correction", "ratings", "self")
CARD = "pairs.card.json"


@dataclass(frozen=True)
class Pair:
    prompt: list[dict]  # the server's own messages, passages included
    chosen: str
    rejected: str
    source: str
    question: str

    def row(self) -> dict:
        """TRL's conversational preference row: prompt messages, then one assistant message each side."""
        return {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}

    def key(self) -> str:
        """Two pairs are the same when question, chosen and rejected agree (whitespace and case aside)."""
        text = "\x00".join(normalise(t) for t in (self.question, self.chosen, self.rejected))
        return hashlib.sha256(text.encode()).hexdigest()


def from_log(rated: list[dict]) -> list[Pair]:
    """Pairs people made: a correction is chosen over the answer it corrects; a 👍 answer over a 👎 one to the same
    question over the same passage ids (an answer's rating is the sum of its raters')."""
    pairs = []
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for a in rated:
        for f in a["feedback"]:
            if f["correction"] and normalise(f["correction"]) != normalise(a["answer"]):
                pairs.append(Pair(a["prompt"], f["correction"], a["answer"], "correction", a["question"]))
        net = sum(f["rating"] or 0 for f in a["feedback"])
        if net:
            key = (normalise(a["question"]), tuple(sorted(p["id"] for p in a["passages"])))
            groups.setdefault(key, {1: [], -1: []})[1 if net > 0 else -1].append(a)
    for sides in groups.values():
        for up in sides[1]:
            for down in sides[-1]:
                if normalise(up["answer"]) != normalise(down["answer"]):
                    pairs.append(Pair(up["prompt"], up["answer"], down["answer"], "ratings", up["question"]))
    return pairs


def adapter_model(settings, base: str) -> str:
    """The model id that serves the current adapter of `base` (the promoted one when there is one)."""
    found = served_adapter(serving_settings(settings).llm, base)
    if found is not None:
        return found[0]
    raise FinetuneError(f"no adapter is configured for base {base!r} (llm.adapters.{base}); train and ship one first")


def judge(rag, prep, raw: str) -> str | None:
    """'chosen' when every sentence of a sampled answer passes the grounding check, 'rejected' when one does not or
    when the model declined although retrieval is confident (the server overrules that "no"), None when its "no"
    stands (that says nothing about grounding)."""
    verdict: dict = {}
    for _ in grounded_answer(iter([raw]), prep.grounder, prep.passages, rag.settings.llm, prep.language, verdict):
        pass
    if verdict.get("mode") == "refused":
        return None
    return "chosen" if verdict.get("mode") == "generated" and verdict.get("supported") == 1.0 else "rejected"


def self_pairs(rag, model: str, questions: list[Question], samples: int = 4, temperature: float = 0.9, seed: int = 13,
               echo: Callable[[str], None] = print) -> tuple[list[Pair], dict]:
    """Sample `samples` answers per question from `model` and pair the grounded ones against the ungrounded ones;
    a question whose samples all pass or all fail gives no pair."""
    pairs, stats = [], {"questions": 0, "samples": 0, "chosen": 0, "rejected": 0, "declined": 0, "no_pair": 0}
    engine = rag.engine(rag.spec(model).slot)
    for n, q in enumerate(questions, 1):
        prep = rag.prepare(model, q.chat())
        if prep.refuse or not rag.uses_engine(prep):
            continue
        stats["questions"] += 1
        sides: dict[str, list[str]] = {"chosen": [], "rejected": []}
        for i in range(samples):
            params = rag.params(temperature=temperature, top_p=0.95)
            params.seed = seed + 1000 * n + i
            raw = "".join(engine.stream(prep.messages, params)).strip()
            side = judge(rag, prep, raw)
            stats["samples"] += 1
            if side is None:
                stats["declined"] += 1
            elif raw not in sides[side]:
                sides[side].append(raw)
        stats["chosen"] += len(sides["chosen"])
        stats["rejected"] += len(sides["rejected"])
        found = [Pair(prep.messages, c, r, "self", q.question) for c in sides["chosen"] for r in sides["rejected"]]
        stats["no_pair"] += not found
        pairs += found
        echo(f"  {n}/{len(questions)} {q.id}: {len(sides['chosen'])} grounded, {len(sides['rejected'])} not")
    return pairs, stats


def training_questions(settings, guard: EvalGuard, languages: list[str], limit: int, seed: int) -> list[Question]:
    """Up to `limit` answerable training questions in `languages`, none near an eval question, in a seeded order."""
    qs = [q for q in load_questions(settings.path(settings.finetune.train_questions))
          if q.answerable and q.language in languages and guard.match(q.question) is None]
    random.Random(seed).shuffle(qs)
    return qs[:limit]


def export(settings, out: Path, rag=None, base: str = "gemma3", questions: int = 100, samples: int = 4,
           echo: Callable[[str], None] = print) -> dict:
    """Write `out` (JSONL, TRL preference format) and its card beside it; return the card: pairs by source, what was
    left out as an eval question or a duplicate, and the seconds spent sampling."""
    ev = settings.evals
    missing = [p for p in (ev.questions, ev.heldout) if not settings.path(p).is_file()]
    if missing:
        raise FinetuneError(f"cannot keep eval questions out without the eval sets: {', '.join(map(str, missing))} missing")
    guard = EvalGuard.from_file(settings.path(ev.questions), settings.path(ev.heldout))
    log = AnswerLog.of(settings) or AnswerLog(log_path(settings))  # rated answers kept before logging was turned off
    pairs = from_log(log.rated())
    stats: dict = {}
    t0 = time.monotonic()
    if questions and rag is not None:
        model = adapter_model(settings, base)
        chosen = training_questions(settings, guard, rag.writes(rag.spec(model)), questions, settings.finetune.seed)
        echo(f"sampling {samples} answers to each of {len(chosen)} training questions from {model}")
        found, stats = self_pairs(rag, model, chosen, samples, seed=settings.finetune.seed, echo=echo)
        stats["model"] = model
        pairs += found
    sampling_s = time.monotonic() - t0
    kept, seen, leaked, dupes = [], set(), 0, 0
    for p in pairs:
        if guard.match(p.question) is not None:
            leaked += 1
        elif p.key() in seen:
            dupes += 1
        else:
            seen.add(p.key())
            kept.append(p)
    card = {"pairs": len(kept), "by_source": {s: sum(p.source == s for p in kept) for s in SOURCES},
            "left_out": {"eval_questions": leaked, "duplicates": dupes}, "self_sampling": stats,
            "sampling_seconds": round(sampling_s, 1), "answer_log": log.counts(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic(out, "".join(json.dumps({**p.row(), "source": p.source}, ensure_ascii=False) + "\n" for p in kept))
    _atomic(out.parent / CARD, json.dumps(card, indent=2, ensure_ascii=False))
    return card


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

"""`ftatlas bench grounding`: what the answer check lets through as a generated answer, on the training questions
(never the held-out set): their reference answers, which it should pass, and two plausible wrong answers, which it
should stop: another question's answer, and a true passage sentence about something else (what a small model writes
when it restates the wrong sentence; the hardest such case: the most relevant sentence of another document)."""

from __future__ import annotations

import json
import random
from pathlib import Path

KINDS = ("reference", "other-answer", "off-topic")


def wrong_sentence(prep, gold_docs: set[str]) -> str | None:
    """The passage sentence a model would most plausibly restate by mistake: the most relevant one from a passage of
    another document, with its [n]. None when every passage comes from the question's own documents."""
    grounder = prep.grounder
    for s in grounder.ranked:
        if prep.passages[s.n - 1].doc_id not in gold_docs and prep.passages[s.n - 1].kind != "calculator":
            return f"{s.text} [{s.n}]"
    return None


def verdict(rag, prep, text: str) -> str:
    """generated, extractive or refused: what the server would show for this text as the model's whole answer."""
    from serve.answer import grounded_answer

    found: dict = {}
    for _ in grounded_answer(iter([f"<ANSWER>: {text}"]), prep.grounder, prep.passages, rag.settings.llm, prep.language,
                             found):
        pass
    return found["mode"]


def run_bench(settings, limit: int, out: Path, seed: int = 13, embedder=None) -> str:
    from serve.rag import RagEngine

    rows = [json.loads(line) for line in settings.path(settings.finetune.train_questions).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    rows = [r for r in rows if r.get("answerable", True) and r.get("answer")]
    random.Random(seed).shuffle(rows)
    rows = rows[:limit]
    rag = RagEngine(settings, embedder=embedder)  # no LLM: the answers are given, only the check runs
    tally: dict[tuple[str, str], list[int]] = {}
    failed: list[dict] = []
    for i, r in enumerate(rows):
        prep = rag.prepare("atlas-rag", [{"role": "user", "content": r["question"]}])
        if prep.refuse or prep.grounder is None:
            continue
        same = [o for o in rows if o["language"] == r["language"] and o["id"] != r["id"]]
        texts = {"reference": r["answer"], "other-answer": same[i % len(same)]["answer"] if same else None,
                 "off-topic": wrong_sentence(prep, set(r.get("doc_ids") or []))}
        for kind, text in texts.items():
            if text is None:
                continue
            mode = verdict(rag, prep, text)
            tally.setdefault((r["language"], kind), []).append(mode == "generated")
            if (kind == "reference") != (mode == "generated"):
                failed.append({"id": r["id"], "kind": kind, "mode": mode, "question": r["question"], "text": text})
    rag.close()
    table = [{"language": lang, "kind": kind, "n": len(v), "generated_share": round(sum(v) / len(v), 3)}
             for (lang, kind), v in sorted(tally.items(), key=lambda kv: (kv[0][0], KINDS.index(kv[0][1])))]
    llm = settings.llm
    record = {"questions": settings.relative(settings.path(settings.finetune.train_questions)), "limit": limit,
              "seed": seed, "thresholds": {k: getattr(llm, k) for k in ("grounding_overlap", "grounding_similarity",
                                                                          "grounding_top_sentences",
                                                                          "grounding_min_supported")},
              "rows": table, "misjudged": failed}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    lines = ["| language | answer | n | shown as generated |", "|---|---|---|---|"]
    lines += [f"| {t['language']} | {t['kind']} | {t['n']} | {t['generated_share']:.3f} |" for t in table]
    return "\n".join(lines) + f"\n\n{len(failed)} misjudged answers in {settings.relative(out)}"

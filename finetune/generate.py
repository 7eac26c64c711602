"""Extra training questions written by any OpenAI-compatible model from the indexed chunks (`--generator-endpoint`)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any

from .errors import FinetuneError
from .questions import Question

PROMPT = (
    "Below is a passage from a document about adapting large language models.\n"
    "Write {n} questions an engineer might ask that this passage answers on its own, each with a short answer "
    "(one sentence) that quotes or closely paraphrases the passage. Write the questions and answers in {language}.\n"
    'Reply with a JSON list only, like [{{"question": "...", "answer": "..."}}].\n\n'
    "Passage ({title} — {section}):\n{text}"
)
LANGUAGES = {"en": "English", "ru": "Russian"}


@dataclass
class GeneratorOptions:
    endpoint: str  # base URL of an OpenAI-compatible API, e.g. http://host:8000/v1
    model: str | None = None  # None: the first model the endpoint lists
    api_key: str = "not-needed"
    per_chunk: int = 2
    max_chunks: int | None = None  # None: every chunk in the index
    timeout_s: float = 60.0
    http_client: Any = None  # an httpx.Client for a proxy or a custom transport


def parse_pairs(text: str) -> list[dict]:
    """Question/answer pairs from a model reply. Example: 'Sure: [{"question": "Q?", "answer": "A."}]' -> [{'question': 'Q?', 'answer': 'A.'}]."""
    m = re.search(r"\[.*\]", text or "", flags=re.S)
    if not m:
        return []
    try:
        items = json.loads(m.group(0))
    except ValueError:
        return []
    out = []
    for it in items if isinstance(items, list) else []:
        if isinstance(it, dict) and isinstance(it.get("question"), str) and isinstance(it.get("answer"), str):
            q, a = it["question"].strip(), it["answer"].strip()
            if len(q) >= 10 and a:
                out.append({"question": q, "answer": a})
    return out


def indexed_chunks(settings) -> list[dict]:
    """Every chunk in the index as {id, text, doc_id, title, section, language}, in id order."""
    from ingest.store import open_collection

    got = open_collection(settings).get(include=["documents", "metadatas"])
    rows = [{"id": cid, "text": doc, **(meta or {})} for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"])]
    return sorted(rows, key=lambda r: r["id"])


def generate_questions(settings, opts: GeneratorOptions, chunks: list[dict] | None = None) -> list[Question]:
    """Ask the generator for questions about each chunk; the builder later dedupes them and checks them against evals."""
    from openai import OpenAI, OpenAIError

    chunks = indexed_chunks(settings) if chunks is None else chunks
    if opts.max_chunks is not None and len(chunks) > opts.max_chunks:
        chunks = sorted(random.Random(settings.finetune.seed).sample(chunks, opts.max_chunks), key=lambda r: r["id"])
    client = OpenAI(base_url=opts.endpoint, api_key=opts.api_key, timeout=opts.timeout_s, max_retries=1,
                    http_client=opts.http_client)
    try:
        model = opts.model or client.models.list().data[0].id
    except (OpenAIError, IndexError) as e:
        raise FinetuneError(f"question generator at {opts.endpoint}: cannot list models ({e}); pass --generator-model") from e
    out: list[Question] = []
    for c in chunks:
        lang = c.get("language") if c.get("language") in LANGUAGES else "en"
        prompt = PROMPT.format(n=opts.per_chunk, language=LANGUAGES[lang], title=c.get("title", ""),
                               section=c.get("section", ""), text=c["text"])
        try:
            resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  temperature=0.3, max_tokens=200 * opts.per_chunk)
        except OpenAIError as e:
            raise FinetuneError(f"question generator at {opts.endpoint} ({model}): {e}") from e
        reply = resp.choices[0].message.content if resp.choices else ""
        for pair in parse_pairs(reply or "")[: opts.per_chunk]:
            qid = "gen-" + hashlib.sha1(pair["question"].encode()).hexdigest()[:10]
            out.append(Question(qid, pair["question"], pair["answer"], lang, [c["doc_id"]], True, f"generated:{model}"))
    return out

"""Fine-tuning room: RAFT data from the real index and retriever, real LoRA training on a tiny Llama built from a
config, the real bundled GGUF for the llama.cpp adapter, and adapter refusals. Nothing here is mocked except the
remote question generator's HTTP transport (no model endpoint can run here)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from finetune import (AdapterError, FinetuneError, GeneratorOptions, build_data, convert_to_gguf, gguf_adapter, train,
                      validate_adapter)
from finetune.base import BUNDLED_ID, bundled_gguf, resolve_base
from finetune.data import CARD, TRAIN, VALIDATION, data_hash, read_split
from finetune.generate import generate_questions, parse_pairs
from serve.gguf_lora import permute
from finetune.overlap import EvalGuard, dedupe, jaccard, normalise, tokens
from finetune.questions import CATEGORIES, Question, load_questions
from finetune.raft import EXTRA_CANDIDATES, MIN_TRIMMED_OVERLAP, answer_overlap, cite, pick_quotes, target
from finetune.train import make_trainer
from ftatlas.settings import load_settings
from serve.evidence import parse_answer, quote_holds
from serve.grounding import reading
from serve.prompt import NO_ANSWER, build_messages, split_sentences
from serve.rag import question_language, retrieval_query
from serve.retrieval import Passage, RetrievalOptions, Retriever

from conftest import REPO, tiny_llama

P = 0.2
LEAK_EXACT = "which PARAMETERS does BitFit update during fine-tuning -- and what stays frozen"  # eval q001, re-cased
LEAK_NEAR = "Which parameters does BitFit update during fine-tuning, and which weights stay frozen?"  # Jaccard 0.71
LEAK_GENERATED = "Which parameters get updated by BitFit during fine-tuning, and what stays frozen?"  # Jaccard 0.67
LEAK_HELDOUT = "Как интеллект-карта выбора метода в атласе описывает узел BitFit?"  # held-out h022 reworded, Jaccard 0.8


# ---------------------------------------------------------------- fixtures


def with_finetune(settings, **over):
    """A copy of `settings` with finetune fields replaced (the shared corpus settings stay untouched)."""
    return settings.model_copy(update={"finetune": settings.finetune.model_copy(update=over)})


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    gguf = bundled_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def generator_transport(request: httpx.Request) -> httpx.Response:
    """The remote OpenAI-compatible generator: lists one model and answers with two question/answer pairs."""
    if request.url.path.endswith("/models"):
        return httpx.Response(200, json={"object": "list", "data": [{"id": "gen-model", "object": "model", "created": 0,
                                                                      "owned_by": "test"}]})
    prompt = json.loads(request.content)["messages"][0]["content"]
    topic = prompt.split("Passage (", 1)[1].split(" — ", 1)[0]
    pairs = [{"question": f"What does the passage titled {topic} say first?", "answer": "It states its main claim."},
             {"question": LEAK_GENERATED, "answer": "Only the biases."}]
    content = "Here you go:\n" + json.dumps(pairs)
    return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "gen-model",
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": content}}]})


def history_of(meta: dict) -> list[dict]:
    """The earlier turns a curated follow-up was asked after; none for the other questions."""
    q = {q.id: q for q in load_questions(REPO / "corpus" / "qa" / "train.jsonl")}.get(meta["id"])
    return q.history if q else []


def curated_subset() -> list[Question]:
    """Answerable questions spread over the documents, the unanswerable ones, and four that must be dropped."""
    qs = load_questions(REPO / "corpus" / "qa" / "train.jsonl")
    answerable = [q for q in qs if q.answerable][::16]
    unanswerable = [q for q in qs if not q.answerable][::12]
    leaks = [Question("leak-exact", LEAK_EXACT, "Biases.", "en", ["bitfit"]),
             Question("leak-near", LEAK_NEAR, "Biases.", "en", ["bitfit"]),
             Question("leak-heldout", LEAK_HELDOUT, "Минимальный апдейт весов.", "ru", ["atlas"])]
    dup = Question("dup", answerable[0].question.upper() + "  ", answerable[0].answer, answerable[0].language,
                   answerable[0].doc_ids)
    return answerable + unanswerable + leaks + [dup]


@pytest.fixture(scope="module")
def ft_settings(corpus_index, tmp_path_factory):
    return with_finetune(corpus_index, oracle_drop_fraction=P, distractors=3, max_seq_len=768, validation_fraction=0.1,
                         runs_dir=tmp_path_factory.mktemp("runs"), batch_size=2, lora_r=4, lora_alpha=8)


@pytest.fixture(scope="module")
def built(ft_settings, smol_tokenizer, embedder, tmp_path_factory):
    """The builder run once on the real index: (folder, card, examples)."""
    out = tmp_path_factory.mktemp("ft-data")
    gen = GeneratorOptions("http://generator.test/v1", max_chunks=2, http_client=httpx.Client(
        transport=httpx.MockTransport(generator_transport)))
    card = build_data(ft_settings, out, questions=curated_subset(), generator=gen, tokenizer=smol_tokenizer,
                      embedder=embedder, progress=False)
    rows = read_split(out, TRAIN) + read_split(out, VALIDATION)
    return out, card, rows


@pytest.fixture(scope="module")
def retriever(ft_settings, embedder):
    return Retriever(ft_settings, embedder)


@pytest.fixture(scope="module")
def tiny_base(smol_tokenizer, tmp_path_factory):
    """A 2-layer, hidden-32 Llama with the SmolLM2 vocabulary, built from a config and saved as an HF folder."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smol_tokenizer)


@pytest.fixture(scope="module")
def tiny_settings(ft_settings, tiny_base):
    return with_finetune(ft_settings, base_model=str(tiny_base), max_steps=2)


@pytest.fixture(scope="module")
def tiny_trainer(tiny_settings, built, tmp_path_factory):
    return make_trainer(tiny_settings, built[0], tmp_path_factory.mktemp("tiny-out"), resolve_base(tiny_settings),
                        progress=False)


def random_adapter(model, folder: Path, seed: int = 0, base_id: str = BUNDLED_ID, b_scale: float = 1.0):
    """A LoRA with random, non-zero A and B (peft's init_lora_weights=False, B times `b_scale`) saved in the peft
    layout: (folder, model)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.mul_(b_scale)
    peft_model.peft_config["default"].base_model_name_or_path = base_id
    peft_model.save_pretrained(folder, save_embedding_layers=False)
    return folder, peft_model


@pytest.fixture(scope="module")
def smol_shaped_adapter(tmp_path_factory):
    """A random LoRA for a 2-layer model with SmolLM2-135M's dimensions (q 576->576, k/v 576->192)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # the vocabulary is not part of the adapter, so a tiny one keeps this model small
    config = LlamaConfig(vocab_size=16, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    torch.manual_seed(0)
    return random_adapter(LlamaForCausalLM(config), tmp_path_factory.mktemp("smol-adapter"))[0]


# ---------------------------------------------------------------- pure helpers


def test_overlap_helpers_catch_rewordings_but_not_other_questions():
    assert normalise("  What is  LoRA? ") == "what is lora"
    assert tokens("Ёлка LoRA") == {"елка", "lora"}
    assert jaccard(frozenset("ab"), frozenset("bc")) == pytest.approx(1 / 3)
    assert dedupe(["What is LoRA?", "what is lora", "Why LoRA?"]) == [0, 2]
    guard = EvalGuard.from_file(REPO / "evals" / "questions.jsonl")
    assert guard.match(LEAK_EXACT) == "q001"
    assert guard.match(LEAK_NEAR) == "q001"
    assert guard.match("How large is the rank of the LoRA update in the original paper?") is None


def test_answer_overlap_and_citation_helpers():
    assert answer_overlap("bias terms only", "Only the bias terms train") == 1.0
    assert answer_overlap("DoRA splits weights", "Nothing related here") == 0.0
    assert cite("BitFit trains biases.", 2) == "BitFit trains biases [2]."
    assert cite("Величину и направление", 3) == "Величину и направление [3]"


def test_permute_matches_llama_cpp_rope_row_order():
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    # two heads of head_dim 4: each head's rotate-half pairs (0,2), (1,3) become adjacent
    assert permute(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


# ---------------------------------------------------------------- training data


def eval_sets() -> list[Path]:
    """The dev set, and the held-out set once it is in the tree: training questions must stay clear of both."""
    return [p for p in (REPO / "evals" / "questions.jsonl", REPO / "evals" / "heldout.jsonl") if p.is_file()]


def test_curated_training_questions_are_disjoint_from_evals():
    qs = load_questions(REPO / "corpus" / "qa" / "train.jsonl")
    for path in eval_sets():
        guard = EvalGuard.from_file(path)
        leaks = {q.id: guard.match(q.question) for q in qs}
        assert {k: v for k, v in leaks.items() if v} == {}, path.name
    assert len(dedupe([q.question for q in qs])) == len(qs)  # no two curated questions collapse into one


def test_curated_questions_cover_every_document_category_and_language():
    qs = load_questions(REPO / "corpus" / "qa" / "train.jsonl")
    manifest = {d["id"] for d in yaml.safe_load((REPO / "corpus" / "manifest.yaml").read_text())["documents"]}
    assert {d for q in qs for d in q.doc_ids} == manifest  # every document is asked about, no unknown ids
    assert {q.category for q in qs} == set(CATEGORIES)
    assert [q.id for q in qs if question_language(q.question) != q.language] == []
    for lang in ("en", "ru"):
        assert {q.category for q in qs if q.language == lang} == set(CATEGORIES), lang
    follow_ups = [q for q in qs if q.category == "follow-up"]
    assert all(q.history[-1]["role"] == "assistant" and q.answerable for q in follow_ups)
    # the history is the same language as the question it leads to
    assert [q.id for q in follow_ups if {question_language(t["content"]) for t in q.history[::2]} != {q.language}] == []


GOOD_ROW = {"id": "t1", "question": "And how much memory does it save?", "answer": "About 3 GB on a 65B model.",
            "language": "en", "doc_ids": ["qlora"], "answerable": True, "category": "follow-up",
            "history": [{"role": "user", "content": "What is double quantization?"},
                        {"role": "assistant", "content": "QLoRA quantizes the quantization constants too."}]}


def write_rows(tmp_path, *rows) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_questions_load_with_category_and_history(tmp_path):
    unanswerable = {"id": "t2", "question": "What is the default LoRA rank in Axolotl?", "answer": "Not stated.",
                    "language": "en", "doc_ids": [], "answerable": False, "category": "unanswerable"}
    q, u = load_questions(write_rows(tmp_path, GOOD_ROW, "", unanswerable))
    assert (q.category, q.history, q.doc_ids) == ("follow-up", GOOD_ROW["history"], ["qlora"])
    assert (u.category, u.history, u.answerable) == ("unanswerable", [], False)


@pytest.mark.parametrize("change, message", [
    ({"category": None}, "missing or empty 'category'"),
    ({"category": "trivia"}, "category 'trivia' is not one of lookup, figure"),
    ({"answerable": "false"}, "'answerable' must be true or false"),
    ({"answerable": False}, "category 'unanswerable' and answerable: false go together"),
    ({"category": "unanswerable", "history": None}, "category 'unanswerable' and answerable: false go together"),
    ({"doc_ids": "qlora"}, "'doc_ids' must be a list of document ids"),
    ({"doc_ids": []}, "an answerable question needs doc_ids and an answer"),
    ({"answer": " "}, "an answerable question needs doc_ids and an answer"),
    ({"history": None}, "a follow-up needs a history, and only a follow-up has one"),
    ({"category": "lookup"}, "a follow-up needs a history, and only a follow-up has one"),
    ({"history": "What is QLoRA?"}, "'history' must be a list"),
    ({"history": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}, "history turn 0 needs role"),
    ({"history": [{"role": "user", "content": ""}]}, "history turn 0 needs role user|assistant and non-empty content"),
    ({"history": [{"role": "assistant", "content": "x"}]}, "history turn 0 should be 'user'"),
    ({"history": [{"role": "user", "content": "What is QLoRA?"}]}, "history must end with the assistant's answer"),
])
def test_a_bad_question_row_is_refused_with_its_line_and_reason(tmp_path, change, message):
    row = {**GOOD_ROW, **change}
    path = write_rows(tmp_path, GOOD_ROW | {"id": "t0"}, {k: v for k, v in row.items() if v is not None})
    with pytest.raises(FinetuneError, match=re.escape(f"{path}:2: {message}")):
        load_questions(path)


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a", "list"]', "a training question must be a JSON object, got list"),
    (json.dumps(GOOD_ROW), "id 't1' is already used on line 1"),
])
def test_malformed_lines_and_repeated_ids_are_refused(tmp_path, line, message):
    path = write_rows(tmp_path, GOOD_ROW, line)
    with pytest.raises(FinetuneError, match=re.escape(f"{path}:2: {message}")):
        load_questions(path)


def test_building_data_without_the_heldout_set_is_refused(ft_settings, tmp_path):
    gone = ft_settings.model_copy(update={"evals": ft_settings.evals.model_copy(update={"heldout": tmp_path / "none.jsonl"})})
    with pytest.raises(FinetuneError, match=r"none\.jsonl not found: training data must be checked against them"):
        build_data(gone, tmp_path / "out", questions=curated_subset())
    assert not (tmp_path / "out").exists()


def test_builder_drops_eval_leaks_and_duplicates(built):
    out, card, rows = built
    assert card.dropped["eval overlap"] == 4  # three curated leaks (one of a held-out question) and one generated
    assert card.dropped_eval_ids == ["h022", "q001"]
    assert card.dropped["duplicate"] >= 1
    guard = EvalGuard.from_file(REPO / "evals" / "questions.jsonl", REPO / "evals" / "heldout.jsonl")
    assert [r["meta"]["question"] for r in rows if guard.match(r["meta"]["question"])] == []
    ids = [r["meta"]["id"] for r in rows]
    assert len(ids) == len(set(ids)) and not {"leak-exact", "leak-near", "leak-heldout", "dup"} & set(ids)
    train_ids = {r["meta"]["id"] for r in read_split(out, TRAIN)}
    assert train_ids.isdisjoint(r["meta"]["id"] for r in read_split(out, VALIDATION))


def test_generated_questions_join_the_data_with_their_chunk_as_oracle_doc(built):
    _, card, rows = built
    gen = [r for r in rows if r["meta"]["source"].startswith("generated")]
    assert card.sources.get("generated") == len(gen) >= 1
    for r in gen:
        assert r["meta"]["source"] == "generated:gen-model" and len(r["meta"]["doc_ids"]) == 1


def test_examples_are_the_servers_prompt_and_cite_the_oracle_at_its_position(built, ft_settings, retriever, embedder):
    from ingest.store import open_collection

    _, _, rows = built
    got = open_collection(ft_settings).get(include=["documents", "metadatas"])
    chunks = {cid: (doc, meta) for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"])}
    full_sets = 0
    for r in rows:
        m = r["meta"]
        whole = [Passage(p["id"], p["doc_id"], chunks[p["id"]][1]["title"], chunks[p["id"]][1].get("section") or "",
                         "", chunks[p["id"]][0], 0.0) for p in m["passages"]]
        history = history_of(m)
        query = retrieval_query([*history, {"role": "user", "content": m["question"]}])  # what the server searches
        # The model reads what the server's `reading` makes of the retrieved chunks: each cut to its best sentences.
        passages, _ = reading(embedder, m["question"], whole, retriever.search_query(query))
        if len(whole) == ft_settings.finetune.distractors + 1:  # nothing dropped for length: the very same prompt
            full_sets += 1
            assert r["messages"][:-1] == build_messages(m["question"], passages, m["language"], history)
        user = r["messages"][1 + len(history)]["content"]
        for chunk in whole:  # each chunk shown whole when short, else as at most 4 of its sentences, in order
            sentences = split_sentences(chunk.text)
            shown = [s for s in sentences if s in user]
            assert chunk.text in user if len(sentences) <= 4 else (0 < len(shown) <= 4 and "\n".join(shown) in user)
        assert [x["role"] for x in r["messages"]] == ["system", *(t["role"] for t in history), "user", "assistant"]
        quotes, answer = parse_answer(r["messages"][-1]["content"])
        if m["kind"] == "oracle":
            n = m["oracle"]
            assert passages[n - 1].doc_id in m["doc_ids"]
            assert answer.rstrip(".!?…").endswith(f" [{n}]") and [q.index for q in quotes] == [n] * len(quotes)
            oracle = passages[n - 1]  # trimming kept the sentences that hold the answer
            answer = re.sub(r" \[\d+\]", "", answer)
            assert answer_overlap(answer, f"{oracle.title} {oracle.section} {oracle.text}") >= \
                MIN_TRIMMED_OVERLAP * m["oracle_overlap"] - 1e-9
        else:
            assert m["oracle"] is None and quotes == [] and not re.search(r"\[\d+\]", answer)
            assert all(p.doc_id not in m["doc_ids"] for p in passages)
    assert full_sets >= 5  # the exact comparison ran on a fair share of the examples


def test_follow_ups_are_trained_with_their_history_as_the_server_sees_them(built):
    _, _, rows = built
    follow_ups = [r for r in rows if history_of(r["meta"])]
    assert len(follow_ups) >= 2
    for r in follow_ups:
        history, m = history_of(r["meta"]), r["meta"]
        # the earlier turns sit between the system prompt and the question, as in a served conversation
        assert r["messages"][1:1 + len(history)] == history
        assert r["messages"][1 + len(history)]["content"].endswith(f"Question: {m['question']}")
    # and their passages were retrieved for the previous question plus this one, as the server searches
    # (test_distractors_are_the_retrievers_top_hits_from_other_documents checks the ranking)
    assert retrieval_query([*history, {"role": "user", "content": "And memory?"}]) == f"{history[-2]['content']} And memory?"


def test_every_quote_in_every_target_stands_verbatim_in_the_passage_the_model_reads(built):
    _, _, rows = built
    quoted = 0
    for r in rows:
        user = r["messages"][-2]["content"]  # the question turn, after any history
        blocks = re.split(r"(?m)^\[(\d+)\] ", user.split("Passages:\n\n", 1)[1].rsplit("\n\nQuestion: ", 1)[0])
        shown = {int(n): text for n, text in zip(blocks[1::2], blocks[2::2])}  # passage n -> its block as shown
        quotes, answer = parse_answer(r["messages"][-1]["content"])
        for q in quotes:
            quoted += 1
            assert q.index == r["meta"]["oracle"] and quote_holds(q.text, shown[q.index]), (r["meta"]["id"], q)
            assert len(q.text.split()) >= 3  # a sentence, not a stray word
        # an oracle target with no sentence to quote (a Russian answer over an English passage) still cites it
        assert answer and (quotes or r["meta"]["kind"] != "oracle" or f"[{r['meta']['oracle']}]" in answer)
    english = [r for r in rows if r["meta"]["kind"] == "oracle" and r["meta"]["language"] == "en"]
    assert quoted and sum(bool(parse_answer(r["messages"][-1]["content"])[0]) for r in english) >= 0.8 * len(english)


def test_only_unanswerable_questions_are_trained_to_refuse_and_the_card_says_how_many(built):
    out, card, rows = built
    refusals = {r["meta"]["id"] for r in rows if parse_answer(r["messages"][-1]["content"])[1] in NO_ANSWER.values()}
    assert refusals == {r["meta"]["id"] for r in rows if r["meta"]["kind"] == "unanswerable"} != set()
    no_oracle = [r for r in rows if r["meta"]["kind"] == "no-oracle"]
    assert no_oracle  # they still answer, with the curated answer and nothing to quote
    for r in no_oracle:
        assert r["messages"][-1]["content"].startswith("<ANSWER>: ") and r["meta"]["id"] not in refusals
    saved = json.loads((out / CARD).read_text())
    assert saved["refusal_share"] == card.refusal_share == pytest.approx(len(refusals) / len(rows), abs=1e-4)
    quoting = sum(bool(parse_answer(r["messages"][-1]["content"])[0]) for r in rows)
    assert 0 < quoting <= card.kinds["oracle"] and saved["quoted_share"] == pytest.approx(quoting / len(rows), abs=1e-4)
    assert f"{card.refusal_share:.1%} refuse" in card.text()
    assert saved["target_tokens"]["max"] >= saved["target_tokens"]["p95"] >= saved["target_tokens"]["mean"] > 5


def test_quotes_are_the_passage_sentences_that_carry_the_answer():
    text = "LoRA is cheap.\nA rank of 8 works well for GPT-3. It ends here.\n- **Bold** item stripped."
    assert pick_quotes("Rank 8 works.", text) == ["A rank of 8 works well for GPT-3."]
    # a second sentence joins only when it adds part of the answer; quotes keep passage order
    assert pick_quotes("LoRA is cheap; rank 8 works.", text) == ["LoRA is cheap.", "A rank of 8 works well for GPT-3."]
    assert pick_quotes("Bold item.", text) == []  # Markdown-stripped sentences are not verbatim: never quoted
    assert target("oracle", "It works.", "en", 2, ["A B C."]) == "##begin_quote## A B C. ##end_quote## [2]\n<ANSWER>: It works [2]."
    assert target("no-oracle", "It works.", "en", None, []) == "<ANSWER>: It works."


def test_a_russian_answer_finds_its_english_evidence_through_glossary_terms():
    text = "LoRA is cheap. In BitFit only the bias terms are trained."
    assert pick_quotes("Обучаются только смещения.", text) == []  # no shared word: the sentence cannot be found
    assert pick_quotes("Обучаются только смещения.", text, "trained bias") == ["In BitFit only the bias terms are trained."]
    # with no sentence to quote, an oracle target still answers and cites its passage, and is kept for training
    assert target("oracle", "Только смещения.", "ru", 3, []) == "<ANSWER>: Только смещения [3]."
    assert target("unanswerable", "", "ru", None, []) == "<ANSWER>: " + NO_ANSWER["ru"]


def test_distractors_are_the_retrievers_top_hits_from_other_documents(built, retriever, ft_settings):
    _, _, rows = built
    k = ft_settings.finetune.distractors + 1 + EXTRA_CANDIDATES
    assert sum(len(r["meta"]["passages"]) > 1 for r in rows) > len(rows) / 2
    for r in rows:
        m = r["meta"]
        query = retrieval_query([*history_of(m), {"role": "user", "content": m["question"]}])
        hits = retriever.retrieve(query, RetrievalOptions(mode=ft_settings.retrieval.mode, top_k=k))
        ranked = [h.id for h in hits if h.doc_id not in m["doc_ids"]]
        distractors = [p for i, p in enumerate(m["passages"], 1) if i != m["oracle"]]
        assert all(p["doc_id"] not in m["doc_ids"] for p in distractors)
        assert distractors or m["kind"] == "oracle"  # only an oracle can be left alone when the budget is tight
        # the ones kept are the best-ranked other-document hits (lower-ranked ones are dropped first for length)
        assert sorted(ranked.index(p["id"]) for p in distractors) == list(range(len(distractors)))


def test_oracle_is_left_out_for_about_P_of_answerable_questions_at_shuffled_positions(built):
    _, card, rows = built
    answerable = [r for r in rows if r["meta"]["kind"] in ("oracle", "no-oracle")]
    share = sum(r["meta"]["kind"] == "no-oracle" for r in answerable) / len(answerable)
    assert abs(share - P) <= 0.1
    assert card.kinds["unanswerable"] >= 1 and card.oracle_drop_fraction == P
    assert len({r["meta"]["oracle"] for r in answerable if r["meta"]["oracle"]}) > 1


def test_no_example_exceeds_max_seq_len_and_the_card_hashes_the_files(built, smol_tokenizer, ft_settings):
    out, card, rows = built
    limit = ft_settings.finetune.max_seq_len
    for r in rows:
        text = smol_tokenizer.apply_chat_template(r["messages"], tokenize=False)
        assert len(smol_tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit
        assert text.rstrip().endswith(r["messages"][-1]["content"] + "<|im_end|>")
    saved = json.loads((out / CARD).read_text())
    assert saved["data_hash"] == data_hash(out) and saved["train"] + saved["validation"] == len(rows)
    assert set(saved["languages"]) == {"en", "ru"} and saved["validation"] >= 1


def test_a_short_budget_drops_distractors_first_and_keeps_the_oracle(ft_settings, smol_tokenizer, embedder, tmp_path):
    qs = [q for q in load_questions(REPO / "corpus" / "qa" / "train.jsonl") if q.answerable and q.language == "en"][:6]
    settings = with_finetune(ft_settings, max_seq_len=420, oracle_drop_fraction=0.0)
    card = build_data(settings, tmp_path, questions=qs, tokenizer=smol_tokenizer, embedder=embedder, progress=False)
    rows = read_split(tmp_path, TRAIN) + read_split(tmp_path, VALIDATION)
    assert rows and all(r["meta"]["kind"] == "oracle" and r["meta"]["tokens"] <= 420 for r in rows)
    assert any(len(r["meta"]["passages"]) < 4 for r in rows)
    assert len(rows) + sum(card.dropped.values()) == len(qs)


def test_a_data_build_that_fails_half_way_keeps_the_previous_files(ft_settings, smol_tokenizer, embedder, tmp_path,
                                                                    monkeypatch):
    from finetune.raft import Example

    qs = [q for q in load_questions(REPO / "corpus" / "qa" / "train.jsonl") if q.answerable and q.language == "en"][:6]
    settings = with_finetune(ft_settings, oracle_drop_fraction=0.0, validation_fraction=0.2)
    build_data(settings, tmp_path, questions=qs, tokenizer=smol_tokenizer, embedder=embedder, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real, calls = Example.row, []

    def disk_fills_up(self):
        calls.append(self.id)
        if len(calls) == 4:  # inside train.jsonl, after validation.jsonl was written
            raise OSError(28, "No space left on device")
        return real(self)

    monkeypatch.setattr(Example, "row", disk_fills_up)
    with pytest.raises(OSError, match="No space"):
        build_data(settings, tmp_path, questions=qs[:5], tokenizer=smol_tokenizer, embedder=embedder, progress=False)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after[TRAIN] == before[TRAIN] and set(after) == set(before)  # whole, and no temporary file left
    assert all(json.loads(line) for line in after[TRAIN].decode().splitlines())


def test_a_cut_lora_gguf_is_converted_again_and_a_failed_conversion_writes_none(smol_shaped_adapter, tmp_path,
                                                                                 monkeypatch):
    import gguf

    adapter = shutil.copytree(smol_shaped_adapter, tmp_path / "adapter")
    (adapter / "lora.gguf").unlink(missing_ok=True)
    whole = gguf_adapter(adapter, bundled_gguf()).read_bytes()
    (adapter / "lora.gguf").write_bytes(whole[: len(whole) // 2])  # newer than the weights, but cut short
    assert gguf_adapter(adapter, bundled_gguf()).read_bytes() == whole

    (adapter / "lora.gguf").unlink()
    real = gguf.GGUFWriter.write_tensors_to_file

    def disk_fills_up(self, *args, **kwargs):  # the header and metadata are on disk by now
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_fills_up)
    with pytest.raises(OSError, match="No space"):
        convert_to_gguf(adapter, bundled_gguf())
    assert sorted(p.name for p in adapter.iterdir()) == sorted(p.name for p in smol_shaped_adapter.iterdir()
                                                               if p.name != "lora.gguf")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", real)
    assert convert_to_gguf(adapter, bundled_gguf()).read_bytes() == whole


def test_an_unreachable_generator_fails_with_its_address(ft_settings):
    opts = GeneratorOptions("http://127.0.0.1:9/v1", model="m", timeout_s=2)
    with pytest.raises(FinetuneError, match="127.0.0.1:9"):
        generate_questions(ft_settings, opts, chunks=[{"id": "c", "text": "x", "doc_id": "d", "language": "en"}])
    assert parse_pairs('no json here') == []


# ---------------------------------------------------------------- training


def test_loss_is_on_the_answer_tokens_only(tiny_trainer, built):
    tok = tiny_trainer.processing_class
    rows = read_split(built[0], TRAIN)
    for ex, row in list(zip(tiny_trainer.train_dataset, rows))[:5]:
        prompt = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
        labels = ex["labels"]
        assert ex["input_ids"][: len(prompt)] == prompt
        assert all(label == -100 for label in labels[: len(prompt)])
        assert labels[len(prompt):] == ex["input_ids"][len(prompt):]
        assert tok.decode(labels[len(prompt):]) == row["messages"][-1]["content"] + "<|im_end|>\n"


def test_training_can_be_limited_to_the_languages_the_server_generates(tiny_settings, built, tmp_path):
    out, card, rows = built
    en_only = with_finetune(tiny_settings, train_languages=["en"])
    trainer = make_trainer(en_only, out, tmp_path, resolve_base(en_only), progress=False)
    train_rows = read_split(out, TRAIN)
    english = [r for r in train_rows if r["meta"]["language"] == "en"]
    assert 0 < len(english) < len(train_rows) and len(trainer.train_dataset) == len(english)
    with pytest.raises(FinetuneError, match="no examples in"):
        make_trainer(with_finetune(tiny_settings, train_languages=["de"]), out, tmp_path, resolve_base(tiny_settings),
                     progress=False)


def test_training_changes_the_adapter_and_not_the_base(tiny_trainer):
    model = tiny_trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tiny_trainer.train()
    after = dict(model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora and all(after[n].requires_grad for n in lora)
    assert any(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert tiny_trainer.state.log_history[0]["loss"] > 0


def test_train_run_stops_on_budget_saves_adapter_and_resumes(tiny_settings, built, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = built[0]
    # the project root above the runs, the data and the base, as in a checkout (paths in records are shown from it)
    tiny_settings = tiny_settings.model_copy(update={"root": tiny_settings.path(tiny_settings.finetune.runs_dir).parent})
    first = train(tiny_settings, data, run_id="budget", max_minutes=1e-4, progress=False, echo=lambda s: None)
    assert first.stopped_by_budget and first.steps == 1
    run = first.run_dir
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "train_config.json", "run.json",
                 "loss.png", "checkpoints/checkpoint-1"):
        assert (run / name).exists(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((run / "run.json").read_text())
    assert record["data_hash"] == data_hash(data) and record["base_model"] == str(tiny_base)
    assert record["base_sha256"] and record["stopped_by_budget"] is True
    # a record kept in the project names its paths from the project root, never this machine's absolute path
    assert record["run_dir"] == f"{run.parent.name}/budget" and tiny_settings.path(record["run_dir"]) == run.resolve()
    root = str(tiny_settings.root.resolve())
    assert not any(str(record[k]).startswith(root) for k in ("run_dir", "adapter", "data", "base_path")), record
    assert json.loads((run / "train_config.json").read_text())["finetune"]["lora_r"] == 4
    with pytest.raises(FinetuneError, match="--resume"):
        train(tiny_settings, data, run_id="budget", progress=False, echo=lambda s: None)

    second = train(tiny_settings, data, run_id="budget", resume=True, progress=False, echo=lambda s: None)
    assert second.steps == 2 and not second.stopped_by_budget
    info = validate_adapter(second.adapter, tiny_base)
    assert info.r == 4 and info.layers == [0, 1]

    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, second.adapter)(ids).logits
    assert not torch.allclose(plain, tuned)


def test_qlora_without_cuda_is_refused(tiny_settings, built, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # so it runs on CUDA hosts too
    with pytest.raises(FinetuneError, match="CUDA"):
        train(with_finetune(tiny_settings, qlora=True), built[0], run_id="qlora", progress=False, echo=lambda s: None)


def test_train_without_data_says_how_to_build_it(tiny_settings, built, tmp_path):
    with pytest.raises(FinetuneError, match="ftatlas finetune data"):
        train(tiny_settings, tmp_path / "nothing", progress=False)
    for bad in ("latest", "latest-gemma3", "../elsewhere"):
        with pytest.raises(FinetuneError, match="run id"):
            train(tiny_settings, built[0], run_id=bad, progress=False)


@pytest.mark.gpu
def test_qlora_trains_a_4bit_base_on_cuda(tiny_settings, built):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("bitsandbytes")
    result = train(with_finetune(tiny_settings, qlora=True, max_steps=1), built[0], run_id="qlora-gpu", progress=False,
                   echo=lambda s: None)
    assert result.steps == 1 and validate_adapter(result.adapter).r == 4
    config = json.loads((result.run_dir / "train_config.json").read_text())
    assert config["device"] == {"cuda": True, "bf16": torch.cuda.is_bf16_supported(), "qlora": True}


def tiny_gemma(vocab: int, **over):
    """A 2-layer Gemma 3 text model built from a config (hidden 32, sliding window on layer 0)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(**{"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64,
                                 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                                 "head_dim": 16, "sliding_window": 8, "max_position_embeddings": 2048,
                                 "layer_types": ["sliding_attention", "full_attention"], **over})
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_answer_only_logits_give_the_full_forward_loss_and_gradients(arch, tiny_base):
    from transformers import AutoModelForCausalLM

    from finetune.answer_loss import answer_loss, answer_mask

    assert answer_mask(torch.tensor([[-100, -100, 7, 8]])).tolist() == [[False, True, True]]
    model = AutoModelForCausalLM.from_pretrained(tiny_base) if arch == "llama" else tiny_gemma(300)
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # right padding, as the collator pads
    labels = torch.full_like(ids, -100)
    labels[0, 20:40], labels[1, 25:30], labels[2, 33:38] = ids[0, 20:40], ids[1, 25:30], ids[2, 33:38]
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    full = model(**inputs).loss
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss, logits, targets = answer_loss(model, inputs)
    loss.backward()
    assert logits.shape == (30, model.config.vocab_size)  # the head ran at the 20 + 5 + 5 answer positions, not 3 x 40
    assert torch.allclose(loss, full, atol=1e-5), (loss, full)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, want[n], atol=1e-5), n
    # With the Trainer's token count over gradient accumulation the loss is a sum over that count.
    count = int((labels[:, 1:] != -100).sum())
    assert torch.allclose(answer_loss(model, inputs, num_items_in_batch=2 * count)[0], full / 2, atol=1e-5)


def test_the_trainer_uses_answer_only_logits_unless_turned_off(tiny_settings, built, tmp_path):
    from finetune.answer_loss import AnswerOnlyTrainer

    on = make_trainer(tiny_settings, built[0], tmp_path / "on", resolve_base(tiny_settings), progress=False)
    off_settings = with_finetune(tiny_settings, answer_only_logits=False)
    off = make_trainer(off_settings, built[0], tmp_path / "off", resolve_base(off_settings), progress=False)
    assert isinstance(on, AnswerOnlyTrainer) and not isinstance(off, AnswerOnlyTrainer)
    batch = on._prepare_inputs(on.data_collator([on.train_dataset[i] for i in range(2)]))
    on.model.eval()
    with torch.no_grad():
        assert torch.allclose(on.compute_loss(on.model, dict(batch)), off.compute_loss(on.model, dict(batch)),
                              atol=1e-5)


# ---------------------------------------------------------------- bases and the adapter map


def test_adapter_map_names_the_default_base_atlas_rag_lora_and_the_others_by_base(monkeypatch, tmp_path):
    from serve.bases import base_of_model, lora_models, served_adapter
    from serve.errors import EngineUnavailable

    s = load_settings("test", root=REPO)
    a, b = tmp_path / "a", tmp_path / "b"
    llm = s.llm.model_copy(update={"adapters": {"smollm2": a, "gemma3": b}})
    assert lora_models(llm) == {"atlas-rag-lora": ("smollm2", a), "atlas-rag-lora-gemma3": ("gemma3", b)}
    # the old single setting is the default adapter, alone or repeated in the map
    assert lora_models(s.llm.model_copy(update={"adapter": a})) == {"atlas-rag-lora": ("smollm2", a)}
    assert lora_models(llm.model_copy(update={"adapter": a})) == lora_models(llm)
    assert lora_models(s.llm) == {}
    # serving Gemma makes its adapter the default and SmolLM2's the named one
    gemma = llm.model_copy(update={"model": "/models/gemma-3-270m-q4_k_m.gguf"})
    assert base_of_model(gemma.model) == "gemma3" and base_of_model("bundled") == "smollm2"
    assert lora_models(gemma) == {"atlas-rag-lora": ("gemma3", b), "atlas-rag-lora-smollm2": ("smollm2", a)}
    with pytest.raises(EngineUnavailable, match="two default adapters"):
        lora_models(llm.model_copy(update={"adapter": b}))
    with pytest.raises(EngineUnavailable, match="unknown base"):
        lora_models(s.llm.model_copy(update={"adapters": {"llama9": a}}))
    # a variant of a base's adapter is served beside it (the gate and the report compare the two in one run)
    c = tmp_path / "c"
    both = llm.model_copy(update={"adapters": {"smollm2": a, "gemma3": b, "gemma3_dpo": c}})
    assert lora_models(both)["atlas-rag-lora-gemma3-dpo"] == ("gemma3", c)
    assert served_adapter(both, "gemma3") == ("atlas-rag-lora-gemma3", b) and served_adapter(both, "smollm2")[1] == a
    with pytest.raises(EngineUnavailable, match="unknown base"):
        lora_models(s.llm.model_copy(update={"adapters": {"llama9-dpo": a}}))
    monkeypatch.setenv("FTATLAS_LLM__ADAPTERS__GEMMA3", str(b))
    assert load_settings("test", root=REPO).llm.adapters == {"gemma3": b}


# ---------------------------------------------------------------- adapters


def test_validate_adapter_refuses_missing_foreign_and_mismatched_adapters(smol_shaped_adapter, tiny_base, tmp_path):
    info = validate_adapter(smol_shaped_adapter, bundled_gguf())
    assert info.r == 8 and info.alpha == 16 and info.modules == 8 and info.base_model == BUNDLED_ID

    with pytest.raises(AdapterError, match="does not exist"):
        validate_adapter(tmp_path / "nope")
    with pytest.raises(AdapterError, match="adapter_config.json"):
        validate_adapter(tmp_path)
    pickled = shutil.copytree(smol_shaped_adapter, tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickled weights are refused"):
        validate_adapter(pickled)
    (pickled / "adapter_model.bin").unlink()
    with pytest.raises(AdapterError, match="has no adapter_model.safetensors"):
        validate_adapter(pickled)
    (pickled / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        validate_adapter(pickled)
    with pytest.raises(AdapterError, match="different base model"):
        validate_adapter(smol_shaped_adapter, tiny_base, check_name=False)
    with pytest.raises(AdapterError, match="trained on"):
        validate_adapter(smol_shaped_adapter, tiny_base)
    with pytest.raises(AdapterError, match="different base model"):
        validate_adapter(smol_shaped_adapter, {"hidden_size": 960, "num_attention_heads": 15, "num_hidden_layers": 32})


def last_logits(gguf_path: Path, tokens: list[int], lora: Path | None) -> np.ndarray:
    """llama.cpp's logits after the last of `tokens`, with or without a GGUF LoRA."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), lora_path=str(lora) if lora else None, n_ctx=64, logits_all=True,
                verbose=False, n_threads=2)
    llm.eval(tokens)
    scores = np.array(llm.scores[len(tokens) - 1])
    llm.close()
    return scores


def test_gguf_adapter_has_llama_cpp_names_and_shapes_and_loads(smol_shaped_adapter):
    import gguf

    out = gguf_adapter(smol_shaped_adapter, bundled_gguf())
    assert out == validate_adapter(smol_shaped_adapter).gguf == smol_shaped_adapter / "lora.gguf"
    written = out.stat().st_mtime_ns
    assert gguf_adapter(smol_shaped_adapter, bundled_gguf()).stat().st_mtime_ns == written  # not converted twice
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0
    assert reader.fields["general.architecture"].contents() == "llama"
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}  # ggml order: ne[0] first
    assert shapes["blk.0.attn_q.weight.lora_a"] == [576, 8] and shapes["blk.0.attn_q.weight.lora_b"] == [8, 576]
    assert shapes["blk.1.attn_k.weight.lora_a"] == [576, 8] and shapes["blk.1.attn_k.weight.lora_b"] == [8, 192]
    assert shapes["blk.1.attn_output.weight.lora_b"] == [8, 576] and len(shapes) == 16

    assert not np.allclose(last_logits(bundled_gguf(), [1, 504, 3158, 314], None),
                           last_logits(bundled_gguf(), [1, 504, 3158, 314], out), atol=1e-3)


@pytest.fixture(scope="session")
def bundled_base():
    """The bundled GGUF de-quantized into the test profile's data folder (once; later sessions reuse the cache)."""
    return resolve_base(load_settings("test", root=REPO))


@pytest.mark.slow
@pytest.mark.parametrize("base_fixture, b_scale", [("bundled_base", 1.0), ("gemma_base", 0.3)])
def test_gguf_adapter_shifts_llama_cpp_logits_like_peft_shifts_the_float_model(base_fixture, b_scale, request, tmp_path):
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bundled_base = request.getfixturevalue(base_fixture)  # SmolLM2 (llama) or Gemma 3, each from its shipped GGUF
    tok = AutoTokenizer.from_pretrained(bundled_base.path)
    model = AutoModelForCausalLM.from_pretrained(bundled_base.path, dtype=torch.float32)
    # The shift must stand well above the engines' quantization noise and stay in the near-linear range. A full-strength
    # random LoRA moves Gemma's logits as much as the base spreads them (shift std 18.9 against 19.9): the engines'
    # tiny differences are then amplified and even a right conversion correlates about 0.89; at B x 0.3 it is 0.98.
    # SmolLM2 needs full strength: at 0.3 its shift nears the noise (0.949).
    adapter, peft_model = random_adapter(model, tmp_path / "adapter", seed=1, base_id=bundled_base.id, b_scale=b_scale)
    text = tok.apply_chat_template([{"role": "user", "content": "What does LoRA train?"}], add_generation_prompt=True,
                                   tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hf_with = peft_model(torch.tensor([ids])).logits[0].numpy()
        with peft_model.disable_adapter():
            hf_without = peft_model(torch.tensor([ids])).logits[0].numpy()

    gguf_adapter = convert_to_gguf(adapter, bundled_base.gguf)

    def llama_logits(lora: Path | None) -> np.ndarray:
        llm = Llama(model_path=str(bundled_base.gguf), lora_path=str(lora) if lora else None, n_ctx=256,
                    logits_all=True, verbose=False, n_threads=2)
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)])
        llm.close()
        return scores

    cpp_without, cpp_with = llama_logits(None), llama_logits(gguf_adapter)
    hf_shift, cpp_shift = hf_with - hf_without, cpp_with - cpp_without
    corr = [np.corrcoef(hf_shift[i], cpp_shift[i])[0, 1] for i in range(len(ids))]
    # Without the q/k row permutation this falls to about 0.83; quantization noise alone keeps it just under 1.
    assert np.mean(corr) > 0.95, corr
    assert (hf_with.argmax(-1) == cpp_with.argmax(-1)).mean() >= 0.8
    assert (hf_with.argmax(-1) != hf_without.argmax(-1)).any()  # the adapter really changes predictions


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["llamacpp", "transformers"])
def test_both_cpu_engines_serve_one_peft_folder_as_atlas_rag_lora(engine_name, ft_settings, bundled_base, embedder,
                                                                  tmp_path):
    from transformers import AutoModelForCausalLM

    from serve import RagEngine

    model = AutoModelForCausalLM.from_pretrained(bundled_base.path, dtype=torch.float32)
    adapter, _ = random_adapter(model, tmp_path / "adapter", seed=1)  # llama.cpp converts it to lora.gguf itself
    settings = ft_settings.model_copy(update={"llm": ft_settings.llm.model_copy(update={"engine": engine_name,
                                                                                          "adapter": adapter})})
    rag = RagEngine(settings, embedder=embedder)
    try:
        rag.load_adapter()
        assert rag.adapter_error is None and "atlas-rag-lora" in rag.models()
        msgs = [{"role": "user", "content": "What does LoRA train?"}]
        params = rag.params(max_tokens=8, temperature=0.0)
        plain = "".join(rag.engine(adapter=False).stream(msgs, params))
        tuned = "".join(rag.engine(adapter=True).stream(msgs, params))
        assert plain and tuned and plain != tuned  # the adapter is really applied, the base engine stays plain
        out = rag.complete("atlas-rag-lora", msgs, max_tokens=16)
        assert out["model"] == "atlas-rag-lora" and out["sources"] and out["choices"][0]["message"]["content"]
    finally:
        rag.close()


# ---------------------------------------------------------------- Gemma 3


def gemma_gguf() -> Path:
    """The shipped Gemma 3 270M GGUF; these tests need its package, which `make install` installs."""
    from serve.bases import BASES
    from serve.errors import EngineUnavailable

    try:
        return BASES["gemma3"].gguf()
    except EngineUnavailable as e:
        pytest.skip(str(e))


def test_gemma_adapter_converts_without_the_llama_rope_permutation_and_loads_in_llama_cpp(tmp_path):
    import gguf
    from safetensors.numpy import load_file

    base_gguf = gemma_gguf()
    # Gemma 3 270M's dimensions (q 640->1024 over 4 heads of 256, k/v 640->256), two layers, a tiny vocabulary
    model = tiny_gemma(16, hidden_size=640, intermediate_size=2048, num_attention_heads=4, num_key_value_heads=1,
                       head_dim=256, sliding_window=512)
    adapter, _ = random_adapter(model, tmp_path / "adapter", base_id="google/gemma-3-270m")
    assert validate_adapter(adapter, base_gguf).layers == [0, 1]
    out = convert_to_gguf(adapter, base_gguf)
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    tensors = {t.name: t for t in reader.tensors}
    shapes = {name: [int(x) for x in t.shape] for name, t in tensors.items()}
    assert shapes["blk.0.attn_q.weight.lora_a"] == [640, 8] and shapes["blk.0.attn_q.weight.lora_b"] == [8, 1024]
    assert shapes["blk.1.attn_k.weight.lora_b"] == [8, 256] and shapes["blk.1.attn_output.weight.lora_b"] == [8, 640]
    assert len(shapes) == 16
    # Gemma's rope keeps HF row order in llama.cpp: q/k's B go over unchanged (the LLaMA path permutes them)
    peft_b = load_file(str(adapter / "adapter_model.safetensors"))
    b = peft_b["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert np.array_equal(np.asarray(tensors["blk.0.attn_q.weight.lora_b"].data).reshape(b.shape), b)

    assert not np.allclose(last_logits(base_gguf, [2, 818, 5279, 529], None),
                           last_logits(base_gguf, [2, 818, 5279, 529], out), atol=1e-3)
    with pytest.raises(AdapterError, match="trained on"):  # a Gemma adapter is refused for SmolLM2 and back
        validate_adapter(adapter, bundled_gguf())


@pytest.fixture(scope="session")
def gemma_base():
    """Gemma 3 270M de-quantized into the test profile's data folder (once; later sessions reuse the cache)."""
    gemma_gguf()
    return resolve_base(load_settings("test", root=REPO), "gemma3")


def test_gemma_base_uses_the_gemma_chat_format(gemma_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma_base.path)
    text = tok.apply_chat_template([{"role": "system", "content": "S."}, {"role": "user", "content": "Q?"},
                                    {"role": "assistant", "content": "A."}], tokenize=False)
    assert text == "<bos><start_of_turn>user\nS.\n\nQ?<end_of_turn>\n<start_of_turn>model\nA.<end_of_turn>\n"
    assert len(tok("<start_of_turn>", add_special_tokens=False)["input_ids"]) == 1  # a real turn token, not pieces
    assert gemma_base.id == "google/gemma-3-270m" and gemma_base.name == "gemma3" and gemma_base.gguf.is_file()


@pytest.fixture(scope="module")
def tiny_gemma_base(tmp_path_factory):
    """A 2-layer Gemma 3 built from a config, with the shipped Gemma tokenizer and chat format, as an HF folder."""
    from finetune.base import gguf_tokenizer
    from serve.bases import GEMMA_TEMPLATE

    tok = gguf_tokenizer(gemma_gguf(), GEMMA_TEMPLATE)
    folder = tmp_path_factory.mktemp("tiny-gemma")
    tiny_gemma(len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_tiny_gemma_trains_on_the_answer_in_its_own_chat_format(ft_settings, built, tiny_gemma_base, tmp_path):
    settings = with_finetune(ft_settings, base_model=str(tiny_gemma_base), max_steps=2)
    trainer = make_trainer(settings, built[0], tmp_path, resolve_base(settings), progress=False)
    tok = trainer.processing_class
    targets = {r["messages"][-1]["content"] for r in read_split(built[0], TRAIN)}
    system = read_split(built[0], TRAIN)[0]["messages"][0]["content"][:40]
    for ex in list(trainer.train_dataset)[:4]:  # the loss reads the target and the turn's end, nothing else
        answer = tok.decode([t for t in ex["labels"] if t != -100])
        assert answer.endswith("<end_of_turn>\n") and answer.removesuffix("<end_of_turn>\n") in targets
        assert tok.decode(ex["input_ids"]).startswith("<bos><start_of_turn>user\n" + system)

    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)


def test_shipping_a_run_copies_its_adapter_with_a_card_and_refuses_oversized_files(smol_shaped_adapter, tmp_path):
    from finetune.ship import ship, shipped_folder

    run = tmp_path / "runs" / "r1"
    shutil.copytree(smol_shaped_adapter, run / "adapter")
    (run / "adapter" / "lora.gguf").unlink(missing_ok=True)  # another test may have converted the shared fixture
    (run / "run.json").write_text(json.dumps({
        "run_id": "r1", "base_model": BUNDLED_ID, "base_sha256": "abc", "data_hash": "d1", "steps": 40,
        "train_seconds": 1200.0, "stopped_by_budget": False, "train_loss": 1.1, "eval_loss": 1.3, "data": "data/ft"}))
    (run / "train_config.json").write_text(json.dumps({"finetune": {"base_model": "bundled", "batch_size": 4,
                                                                    "grad_accum": 1, "max_steps": 150}, "max_steps": 40}))
    (tmp_path / "data" / "ft").mkdir(parents=True)
    (tmp_path / "data" / "ft" / "data_card.json").write_text(json.dumps({"data_hash": "d1", "train": 80}))
    (run / "eval.json").write_text(json.dumps({"atlas-rag-lora": {"fact_recall": 0.6}}))
    assert shipped_folder(run) == Path("adapters/smollm2")
    out = ship(run, tmp_path / "adapters" / "smollm2", root=tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "card.json"]
    card = json.loads((out / "card.json").read_text())
    assert (card["base_model"], card["base_sha256"], card["data_hash"], card["steps"]) == (BUNDLED_ID, "abc", "d1", 40)
    # what ran, not what settings.yaml said: 40 steps of 4 over 80 examples are 2 epochs
    assert (card["train_examples"], card["epochs"]) == (80, 2.0) and "80 (2.0 epochs)" in (out / "README.md").read_text()
    assert (card["finetune"]["base_model"], card["finetune"]["max_steps"]) == (BUNDLED_ID, 40)
    (tmp_path / "data" / "ft" / "data_card.json").write_text(json.dumps({"data_hash": "other", "train": 80}))
    assert "epochs" not in json.loads((ship(run, tmp_path / "elsewhere", root=tmp_path) / "card.json").read_text())
    assert card["eval"] == {"atlas-rag-lora": {"fact_recall": 0.6}} and "d1" in (out / "README.md").read_text()
    # a file git should not carry is refused, and the adapter shipped before stays whole
    (run / "adapter" / "lora.gguf").write_bytes(b"\0" * (11 * 2**20))
    with pytest.raises(AdapterError, match="lora.gguf 11.0 MB is over"):
        ship(run, out)
    assert (out / "card.json").is_file() and not (out / "lora.gguf").exists()
    with pytest.raises(AdapterError, match="not a finished training run"):
        ship(tmp_path / "runs" / "missing", out)


def test_a_later_report_goes_on_the_shipped_card_whole_and_a_bad_one_changes_nothing(tmp_path):
    from finetune.ship import record_eval

    folder = tmp_path / "adapters" / "gemma3"
    folder.mkdir(parents=True)
    card = {"run_id": "r1", "base_model": "google/gemma-3-270m", "data_hash": "d1", "steps": 399, "train_seconds": 6237.0,
            "files_mb": {"lora.gguf": 5.6}, "eval": {"report": "reports/old", "by_config": [{"config": "x"}]}}
    (folder / "card.json").write_text(json.dumps(card))
    report = tmp_path / "reports" / "20261202-130000"
    report.mkdir(parents=True)
    rows = {"by_config": [{"config": "atlas-rag-lora-gemma3", "fact_recall": 0.5}], "by_set": []}
    (report / "results.json").write_text(json.dumps({"id": "20261202-130000", "summary": rows, "records": []}))
    record_eval(folder, report, shown="reports/20261202-130000")
    after = json.loads((folder / "card.json").read_text())
    assert after["eval"] == {"report": "reports/20261202-130000", "report_id": "20261202-130000", **rows}
    assert {k: v for k, v in after.items() if k != "eval"} == {k: v for k, v in card.items() if k != "eval"}
    shown = (folder / "README.md").read_text()
    assert "atlas-rag-lora-gemma3" in shown and "reports/20261202-130000" in shown and "Gemma Terms of Use" in shown
    # a report cut short (no summary) or no card: a clear error, and the card stays as it was
    broken = tmp_path / "reports" / "broken"
    broken.mkdir()
    (broken / "results.json").write_text('{"summary": {}, "rec')
    for bad_folder, bad_report, why in [(folder, broken, "not a finished eval report"),
                                        (tmp_path / "nothing", report, "no readable card.json")]:
        with pytest.raises(AdapterError, match=why):
            record_eval(bad_folder, bad_report)
    assert json.loads((folder / "card.json").read_text()) == after
    assert not list(folder.glob(".*.tmp"))


# ---------------------------------------------------------------- the shipped adapter


def test_make_serve_serves_the_shipped_adapter_and_its_card_says_where_it_came_from():
    from finetune.ship import MAX_FILE_MB, MAX_TOTAL_MB
    from serve.bases import BASES
    from serve.models import configured

    served = load_settings(None, root=REPO)
    assert served.llm.adapters, "settings.yaml serves a trained adapter: a fresh clone answers with it"
    assert load_settings("test", root=REPO).llm.adapters == {}
    assert served.serve.default_model in configured(served)
    for base, folder in served.llm.adapters.items():
        folder = REPO / folder
        sizes = {f.name: f.stat().st_size / 2**20 for f in folder.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "lora.gguf", "card.json", "README.md"} <= set(sizes)
        assert max(sizes.values()) <= MAX_FILE_MB and sum(sizes.values()) <= MAX_TOTAL_MB
        card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
        assert card["base_model"] == BASES[base].hf_id and card["epochs"] >= 3 and card["data_hash"]
        assert card["eval"]["report"].startswith("reports/") and card["train_seconds"] > 0
        if base == "gemma3":
            assert "Gemma Terms of Use" in (folder / "README.md").read_text(encoding="utf-8")
        validate_adapter(folder, BASES[base].gguf())


def test_the_shipped_adapter_answers_through_the_server(corpus_index, embedder):
    from serve import RagEngine

    served = load_settings(None, root=REPO)
    settings = corpus_index.model_copy(update={"llm": corpus_index.llm.model_copy(update={"adapters": served.llm.adapters}),
                                               "serve": served.serve})
    rag = RagEngine(settings, embedder=embedder)
    try:
        rag.load_adapter()
        assert rag.adapter_errors == {} and served.serve.default_model in rag.models()
        out = rag.complete(served.serve.default_model,
                           [{"role": "user", "content": "Which parameters does BitFit train?"}], max_tokens=160)
    finally:
        rag.close()
    assert out["grounding"]["mode"] in ("generated", "extractive") and out["choices"][0]["message"]["content"]
    assert out["sources"] and re.search(r"\[\d\]", out["choices"][0]["message"]["content"])


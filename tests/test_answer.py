"""The answer a user gets: quotes become checked evidence, sentences stream as they pass, a doomed generation stops."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from conftest import REPO
from test_engines import QLORA_Q, ScriptedEngine, with_llm

pytestmark = pytest.mark.timeout(300)

MARKERS = ("##begin_quote##", "##end_quote##", "<ANSWER>")
MADE_UP = "QLoRA fine-tunes a 65B model on a single toaster."


class Recording(ScriptedEngine):
    """The scripted reply, remembering how many pieces the caller has pulled so far."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.pulled = 0
        self.pieces = len(reply.split(" "))

    def stream(self, messages, params):
        for piece in super().stream(messages, params):
            self.pulled += 1
            yield piece


class Counting:
    """The real engine, passed through, counting the deltas the caller pulls (the generation it causes)."""

    def __init__(self, inner):
        self.inner, self.pulled = inner, 0

    def stream(self, messages, params):
        inner = self.inner.stream(messages, params)
        try:
            for delta in inner:
                self.pulled += 1
                yield delta
        finally:
            inner.close()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def raft_reply(rag, question: str = QLORA_Q, tail: str = "") -> tuple[str, object]:
    """A RAFT-format reply built from the real passages: the top sentence quoted, a made-up quote, then the answer."""
    from serve.evidence import format_answer, quote_holds

    prep = rag.prepare("atlas-rag", [{"role": "user", "content": question}])
    best = next(s for s in prep.grounder.ranked if quote_holds(s.text, prep.passages[s.n - 1].text))
    answer = f"{best.text.rstrip('.')} [{best.n}]." + tail
    return format_answer([(best.n, best.text), (1, MADE_UP)], answer), best


def scripted_rag(rag, reply: str, engine=None, **llm):
    from serve import RagEngine

    settings = with_llm(rag.settings, **llm) if llm else rag.settings
    return RagEngine(settings, engine=engine or ScriptedEngine(reply), retriever=rag.retriever)


# The real SmolLM2 never writes the RAFT format (only a tuned adapter does), so those cases are scripted.
def test_quotes_become_evidence_and_the_content_is_the_answer_alone(rag):
    reply, best = raft_reply(rag)
    out = scripted_rag(rag, reply).complete("atlas-rag", [{"role": "user", "content": QLORA_Q}], max_tokens=256)
    content = out["choices"][0]["message"]["content"]
    assert not any(m in content for m in MARKERS)
    assert content == f"{best.text.rstrip('.')} [{best.n}]."
    g = out["grounding"]
    assert g["mode"] == "generated"
    assert g["evidence"] == [{"index": best.n, "text": best.text}], "the quote that holds verbatim is the evidence"
    assert g["evidence_dropped"] == 1, "the made-up quote is dropped and counted"


def test_a_quote_under_the_wrong_number_is_kept_with_its_passage_but_the_sentence_must_hold_in_what_it_cites(rag):
    """Small models copy the right sentence under the wrong [n]. The quote is evidence of what the passages say, so it
    is kept with the passage that holds it; the sentence is not re-cited (measured on dev: re-citing passed 4 more
    Gemma answers, all wrong), so it falls back to quoting."""
    from serve.evidence import format_answer, quote_holds

    prep = rag.prepare("atlas-rag", [{"role": "user", "content": QLORA_Q}])
    best = next(s for s in prep.grounder.ranked if quote_holds(s.text, prep.passages[s.n - 1].text)
                and not any(o.n != s.n and o.text == s.text for o in prep.grounder.sentences))
    wrong = next(n for n in range(1, len(prep.passages) + 1)
                 if n != best.n and not prep.grounder.support(f"{best.text} [{n}]", 0.6, 0.5, 6)[0])
    reply = format_answer([(wrong, best.text)], f"{best.text.rstrip('.')} [{wrong}].")
    out = scripted_rag(rag, reply).complete("atlas-rag", [{"role": "user", "content": QLORA_Q}], max_tokens=256)
    g = out["grounding"]
    assert g["evidence"] == [{"index": best.n, "text": best.text}] and g["evidence_dropped"] == 0, g
    assert g["mode"] == "extractive", g


def test_an_extractive_answer_never_quotes_a_list_intro_alone(rag):
    """'The paper defines three settings:' says nothing without its list; the settings themselves are quoted."""
    from serve.grounding import _INTRO

    question = "What prompting settings does the GPT-3 paper define for in-context learning?"
    prep = rag.prepare("atlas-rag", [{"role": "user", "content": question}])
    intros = [s for s in prep.grounder.ranked[:3] if _INTRO.search(s.text)]
    assert intros, "the question's passages rank a list intro among the top 3 (else this test guards nothing)"
    quoted = prep.grounder.extractive(3)
    assert not any(s.text in quoted for s in intros), quoted


def test_an_extractive_answer_quotes_the_next_sentence_of_the_same_passage(embedder):
    """The fact a question asks for often sits in the sentence after the best one, in the same passage; an
    extractive answer quoted one sentence per passage, so it could never reach it (dev: fact recall of the quotes
    en 0.649 -> 0.699, ru 0.608 -> 0.664 without that cap)."""
    from ftatlas.settings import LLMSettings
    from serve.grounding import Grounder
    from serve.retrieval import Passage

    bitfit = Passage("a", "bitfit", "BitFit", "BitFit > How it works", "", "BitFit fine-tunes only the bias terms of "
                     "the network. Every weight matrix and the embeddings stay frozen during fine-tuning.", 1.0)
    lora = Passage("b", "lora", "LoRA", "LoRA > How it works", "", "LoRA learns a low-rank update of chosen weight "
                   "matrices. Its rank r is the main knob.", 0.5)
    grounder = Grounder(embedder, "Which parameters does BitFit fine-tune, and which stay frozen?", [bitfit, lora])
    llm = LLMSettings()
    quoted = grounder.extractive(2, llm.extractive_within, llm.extractive_per_passage)
    assert sorted(re.split(r"(?<=\]) ", quoted)) == [  # both halves of the answer, from the passage that holds them
        "BitFit fine-tunes only the bias terms of the network. [1]",
        "Every weight matrix and the embeddings stay frozen during fine-tuning. [1]"], quoted


def test_a_russian_question_about_the_atlas_quotes_the_sentence_that_holds_its_word(rag):
    """'Что в заключении атласа названо памятью?' quoted 'От полного переобучения — к параметрической экономии.':
    the stemmer cuts 'память' to 'памя' but 'памятью' to 'памят', so no sentence shared a word with the question, and
    the English glossary terms of the search query weighed against every Russian sentence. The English-only
    embedder's cosine, noise for Russian, then chose."""
    from ingest.keyword import same_word

    assert same_word("памя", "памят") and same_word("обуча", "обучен") and not same_word("модел", "модул")
    for question, sentence in (("Что в заключении атласа названо памятью?", "RAG — это память."),
                               ("Как заключение атласа характеризует RLHF?", "RLHF — это эмпатия.")):
        prep = rag.prepare("atlas-rag", [{"role": "user", "content": question}])
        assert prep.grounder.extractive(2).startswith(sentence), prep.grounder.extractive(2)


RU_Q = "Сколько памяти GPU понадобилось QLoRA для дообучения модели на 65B параметров?"


@pytest.mark.parametrize("quoted, extra, cite_other, mode", [
    (True, "", False, "generated"),        # the quote it rests on holds: the Russian sentence stands
    (False, "", False, "extractive"),      # no quote: the English-only check cannot read it, so it falls back
    (True, " на 999 ГБ", False, "extractive"),  # a figure the quoted passage does not state
    (True, " в GPT-9", False, "extractive"),    # a Latin term the quoted passage does not state
    (True, "", True, "extractive"),         # it cites a passage it quoted nothing from
])
def test_a_russian_sentence_over_english_passages_stands_on_its_verified_quote(rag, quoted, extra, cite_other, mode):
    from serve.evidence import format_answer, quote_holds

    prep = rag.prepare("atlas-rag", [{"role": "user", "content": RU_Q}])
    top = rag.settings.llm.grounding_top_sentences
    best = next(s for s in prep.grounder.ranked[:top] if not s.russian and quote_holds(s.text, prep.passages[s.n - 1].text))
    n = next(i for i in range(1, len(prep.passages) + 1) if i != best.n) if cite_other else best.n
    answer = f"Хватило одной видеокарты{extra} [{n}]."  # no term the English view could share: only the quote backs it
    reply = format_answer([(best.n, best.text)] if quoted else [], answer)
    out = scripted_rag(rag, reply, generate_languages=["en", "ru"]).complete(
        "atlas-rag", [{"role": "user", "content": RU_Q}], max_tokens=256)
    g = out["grounding"]
    assert g["mode"] == mode, (reply, out["choices"][0]["message"]["content"])
    assert g["quote_backed"] == (mode == "generated")
    if mode == "generated":
        assert out["choices"][0]["message"]["content"] == answer
        assert g["evidence"] == [{"index": best.n, "text": best.text}]


def test_a_passing_sentence_streams_before_the_generation_ends_and_quotes_never_stream(rag):
    tail = " " + " ".join(["It", "then", "rambles", "on", "about", "nothing", "in", "particular."] * 6)
    reply, best = raft_reply(rag, tail=tail)
    engine = Recording(reply)
    chunks = scripted_rag(rag, reply, engine=engine).stream_chunks(
        "atlas-rag", [{"role": "user", "content": QLORA_Q}], max_tokens=256)
    next(chunks)  # role and sources
    first = next(c for c in chunks if c["choices"][0]["delta"].get("content"))
    assert first["choices"][0]["delta"]["content"] == f"{best.text.rstrip('.')} [{best.n}]."
    assert engine.pulled < engine.pieces, "the first sentence went out while the model was still writing"
    rest = list(chunks)
    assert not any(m in (c["choices"][0]["delta"].get("content") or "") for c in rest for m in MARKERS)
    assert rest[-1]["grounding"]["evidence"] == [{"index": best.n, "text": best.text}]


def test_a_second_answer_marker_ends_the_answer_and_the_generation(rag):
    reply, best = raft_reply(rag)
    looped = reply + " <ANSWER>: " + reply.split("<ANSWER>: ", 1)[1] + " <ANSWER>: more and more of the same words"
    engine = Recording(looped * 3)
    out = scripted_rag(rag, looped * 3, engine=engine).complete("atlas-rag", [{"role": "user", "content": QLORA_Q}],
                                                               max_tokens=256)
    assert out["choices"][0]["message"]["content"] == f"{best.text.rstrip('.')} [{best.n}]."  # once, no marker
    assert out["grounding"]["mode"] == "generated"
    assert engine.pulled < engine.pieces / 2, "the loop after the second marker was not generated"


def test_a_misspelt_answer_marker_never_reaches_the_content():
    from serve.evidence import parse_answer

    # written by the 20-minute Gemma adapter (dev q013): the marker misspelt, then the answer started over
    said = "[1] - Each layer gets its own learning rate. [<ANSWER]: [1] - Each layer gets its own learning rate."
    assert parse_answer(said) == ([], "[1] - Each layer gets its own learning rate.")
    assert parse_answer("<ANSWER> LoRA merges [2].") == ([], "LoRA merges [2].")


def test_an_unsupported_opening_stops_the_generation_at_once(rag):
    reply = MADE_UP + " " + " ".join(["And", "so", "on", "for", "a", "long", "while."] * 10)
    engine = Recording(reply)
    out = scripted_rag(rag, reply, engine=engine).complete("atlas-rag", [{"role": "user", "content": QLORA_Q}])
    assert out["grounding"]["mode"] == "extractive" and out["grounding"]["stopped_early"]
    assert engine.pulled <= len(MADE_UP.split(" ")) + 1, "nothing is pulled after the failing sentence ends"
    assert "48 GB" in out["choices"][0]["message"]["content"]  # the paper's figure, not the calculator's estimate


def test_the_real_model_stops_as_soon_as_its_opening_fails(rag):
    """The bundled SmolLM2, answering for real: it lists, unsupported, up to max_tokens (measured: 160 of 160);
    the generation now ends at its first unsupported sentence."""
    from serve import RagEngine

    counting = Counting(rag.engine())
    engine = RagEngine(rag.settings, engine=counting, retriever=rag.retriever)
    msgs = [{"role": "user", "content": "Which parameters does BitFit update during fine-tuning, and what stays frozen?"}]
    out = engine.complete("atlas-rag", msgs, max_tokens=96)
    assert out["grounding"]["mode"] == "extractive" and out["grounding"]["stopped_early"]
    assert counting.pulled < 48, counting.pulled
    assert re.search(r"BitFit.*\[\d\]", out["choices"][0]["message"]["content"]), "the passages are quoted instead"


def test_evals_score_the_content_not_the_evidence(rag, embedder):
    from evals.backends import Backend, streamed
    from evals.gold import load_questions
    from evals.runner import evaluate

    q = next(q for q in load_questions(REPO / "evals" / "questions.jsonl") if "65B" in q.question)
    reply, best = raft_reply(rag, q.question)
    scripted = scripted_rag(rag, reply)
    backend = Backend("scripted", streamed(scripted), None, set(scripted.models()))
    from evals.configs import Config

    rec = evaluate(q, Config("atlas-rag", "atlas-rag", {"mode": "hybrid"}), backend, embedder=embedder, max_tokens=256)
    assert rec["error"] is None
    assert rec["answer"] == f"{best.text.rstrip('.')} [{best.n}]."
    assert rec["grounding"]["evidence"] == [{"index": best.n, "text": best.text}]
    assert rec["latency"]["ttft_ms"] is not None


# ---------------------------------------------------------------- languages


def test_russian_reaches_a_model_that_writes_it_and_not_one_that_does_not(rag):
    question = [{"role": "user", "content": "Сколько памяти GPU понадобилось QLoRA для дообучения модели 65B?"}]
    for model, reaches in (("bundled", False), ("/models/gemma-3-270m-q4_k_m.gguf", True)):
        engine = Recording("Ответ.")
        out = scripted_rag(rag, "", engine=engine, model=model).complete("atlas-rag", question)
        assert (engine.pulled > 0) is reaches, model
        assert out["grounding"]["mode"] == "extractive"  # "Ответ." states nothing the passages hold
    pinned = Recording("Ответ.")
    scripted_rag(rag, "", engine=pinned, model="/models/gemma-3-270m-q4_k_m.gguf", generate_languages=["en"]).complete(
        "atlas-rag", question)
    assert pinned.pulled == 0, "an explicit llm.generate_languages still wins"


def test_languages_written_by_base():
    from serve.engines import languages_written

    assert languages_written("bundled") == languages_written("smollm2") == ["en"]
    assert languages_written("HuggingFaceTB/SmolLM2-135M-Instruct") == ["en"]
    assert languages_written("gemma3") == ["en", "ru"]
    assert languages_written("/x/gemma-3-270m-q4_k_m.gguf") == ["en", "ru"]
    assert languages_written("someone/unknown-7b") == ["en"]


# ---------------------------------------------------------------- ask --history


def cli(settings, *args):
    from ftatlas.cli import cli as main

    env = {"FTATLAS_INGEST__DATA_DIR": str(settings.data_dir), "FTATLAS_LLM__MAX_TOKENS": "24"}
    return CliRunner().invoke(main, ["--profile", "test", *args], env=env)


def test_ask_answers_a_follow_up_from_a_history_file(corpus_index, tmp_path):
    history = tmp_path / "history.json"
    history.write_text(json.dumps([
        {"role": "user", "content": "What is QLoRA?"},
        {"role": "assistant", "content": "QLoRA fine-tunes LoRA adapters over a frozen 4-bit base model [1]."},
    ]))
    result = cli(corpus_index, "ask", "And how much memory does it save?", "--history", str(history))
    assert result.exit_code == 0, result.output
    sources = result.output.split("Sources:")[1]
    assert sources.strip().startswith("[") and "QLoRA" in sources.splitlines()[1]


def test_ask_falls_back_to_atlas_rag_when_the_default_model_is_not_served(corpus_index, monkeypatch):
    monkeypatch.setenv("FTATLAS_SERVE__DEFAULT_MODEL", "atlas-rag-lora-gemma3")  # the test profile serves no adapter
    result = cli(corpus_index, "ask", "What is QLoRA?")
    assert result.exit_code == 0, result.output
    assert "the default model atlas-rag-lora-gemma3 is not served" in result.output and "Sources:" in result.output
    # Named explicitly, the same model is an error, not a silent substitute.
    named = cli(corpus_index, "ask", "What is QLoRA?", "--mode", "atlas-rag-lora-gemma3")
    assert named.exit_code == 1 and "atlas-rag-lora-gemma3" in named.output


@pytest.mark.parametrize("content, fragment", [
    (None, "cannot read"),
    ("{not json", "not valid JSON"),
    ('{"role": "user", "content": "x"}', "expected a JSON list"),
    ('[{"role": "wizard", "content": "x"}]', "turn 0 needs a role"),
    ('[{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]', "turn 1 needs a non-empty text"),
])
def test_ask_names_a_bad_history_file(corpus_index, tmp_path, content, fragment):
    history = tmp_path / "history.json"
    if content is not None:
        history.write_text(content)
    result = cli(corpus_index, "ask", "And then?", "--history", str(history))
    assert result.exit_code == 1
    assert str(history) in result.output and fragment in result.output

"""From feedback to DPO, for real: pairs exported from a real answer log and the real grounding check, loaded by TRL,
and DPO on a tiny Llama built from a config that widens the chosen-minus-rejected margin against its SFT adapter."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, make_settings, tiny_llama

pytestmark = pytest.mark.timeout(600)

SYSTEM = "Answer from the numbered passages and cite them as [n]."
PASSAGES = [{"id": "bitfit#0", "doc_id": "bitfit", "score": 0.9}, {"id": "lora#3", "doc_id": "lora", "score": 0.4}]
DEV_QUESTION = json.loads((REPO / "evals" / "questions.jsonl").read_text(encoding="utf-8").splitlines()[0])["question"]


def answer(log, cid, question, text, passages=PASSAGES, created=None):
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Passages: [1] ...\n\nQuestion: {question}"}]
    log.record({"id": cid, "model": "atlas-rag-lora-gemma3", "adapter": "adapters/gemma3", "adapter_sha256": "ab",
                "question": question, "language": "en", "messages": [{"role": "user", "content": question}],
                "prompt": prompt, "passages": passages, "answer": text, "mode": "generated", "created": created})


@pytest.fixture
def logged(tmp_path):
    """A real answer log with what users did: ratings on two answers to one question, corrections, an eval question."""
    from serve.answer_log import AnswerLog, Feedback

    settings = make_settings(tmp_path / "data")
    log = AnswerLog.of(settings)
    q = "What does BitFit train?"
    answer(log, "up", q, "BitFit trains only the bias terms [1].")
    answer(log, "down", q, "BitFit trains all the weights [2].")
    answer(log, "other-passages", q, "BitFit trains attention heads.", passages=PASSAGES[:1])
    answer(log, "fixed", "Which layers does LoRA adapt?", "LoRA adapts every layer.")
    answer(log, "fixed-again", "Which layers does LoRA adapt?", "LoRA adapts every layer.")
    answer(log, "leak", DEV_QUESTION, "Everything.")
    log.rate(Feedback("up", "key:a", 1, None, None))
    log.rate(Feedback("up", "key:b", 1, None, None))
    log.rate(Feedback("down", "key:a", -1, None, None))
    log.rate(Feedback("other-passages", "key:b", 1, None, None))  # 👍 but over other passages: no pair with "down"
    for cid in ("fixed", "fixed-again"):  # the same correction of the same answer twice: one pair
        log.rate(Feedback(cid, "key:a", -1, "LoRA adapts the attention projections W_q and W_v [1].", None))
    log.rate(Feedback("leak", "key:a", -1, "Only the biases.", None))
    return settings


def test_export_pairs_corrections_and_ratings_and_keeps_eval_questions_out(logged, tmp_path):
    from finetune.pairs import export

    out = tmp_path / "pairs" / "pairs.jsonl"
    card = export(logged, out, rag=None, questions=0, echo=lambda s: None)
    assert card["by_source"] == {"correction": 1, "ratings": 1, "self": 0}
    assert card["left_out"] == {"eval_questions": 1, "duplicates": 1}
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_source = {r["source"]: r for r in rows}
    assert by_source["ratings"]["chosen"] == [{"role": "assistant", "content": "BitFit trains only the bias terms [1]."}]
    assert by_source["ratings"]["rejected"][0]["content"] == "BitFit trains all the weights [2]."
    assert by_source["correction"]["chosen"][0]["content"].startswith("LoRA adapts the attention projections")
    assert by_source["correction"]["prompt"][0] == {"role": "system", "content": SYSTEM}, "the server's own prompt"
    assert all(DEV_QUESTION not in json.dumps(r, ensure_ascii=False) for r in rows)
    assert json.loads((out.parent / "pairs.card.json").read_text())["pairs"] == 2


def test_the_grounding_check_sorts_sampled_answers_into_chosen_and_rejected(rag):
    from finetune.pairs import judge
    from serve.prompt import NO_ANSWER

    prep = rag.prepare("atlas-rag", [{"role": "user", "content": "What does BitFit train?"}])
    # two passage sentences restated as the model writes them: each cites its passage before the full stop
    grounded = " ".join(f"{t.text.rstrip('.')} [{t.n}]." for t in prep.grounder.top_sentences(2, per_passage=1))
    assert judge(rag, prep, grounded) == "chosen"
    assert judge(rag, prep, grounded + " BitFit was first used to train whales in 1850 [1].") == "rejected"
    assert judge(rag, prep, "Quantum sailors invented gradient descent on the moon [2].") == "rejected"
    # retrieval is confident here, so the server overrules a "no answer" (a false refusal): a rejected sample
    assert prep.grounder.best_relevance() >= rag.settings.llm.model_refusal_below
    assert judge(rag, prep, NO_ANSWER["en"]) == "rejected"


def test_self_supplied_pairs_pair_grounded_samples_against_ungrounded_ones(rag):
    from finetune.pairs import judge, self_pairs
    from finetune.questions import Question

    questions = [Question("t1", "What does BitFit train?", "", "en", ["bitfit"]),
                 Question("t2", "How much memory did QLoRA need for a 65B model?", "", "en", ["qlora"])]
    pairs, stats = self_pairs(rag, "atlas-rag", questions, samples=3, echo=lambda s: None)
    assert stats["questions"] == 2 and stats["samples"] == 6
    assert stats["chosen"] + stats["rejected"] + stats["declined"] <= 6
    for p in pairs:
        prep = rag.prepare("atlas-rag", [{"role": "user", "content": p.question}])
        assert (judge(rag, prep, p.chosen), judge(rag, prep, p.rejected)) == ("chosen", "rejected")
        assert p.prompt == prep.messages and p.source == "self"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer Llama with the SmolLM2 tokenizer and an SFT LoRA adapter on it (B non-zero, as after training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    from finetune.base import bundled_gguf

    gguf = bundled_gguf()
    base = tiny_llama(tmp_path_factory.mktemp("tiny-base"), AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    sft = tmp_path_factory.mktemp("tiny-sft")
    model.save_pretrained(sft)
    return base, sft


def test_exported_pairs_load_in_trl_and_dpo_widens_the_margin_from_the_sft_adapter(logged, tiny, tmp_path):
    from safetensors.torch import load_file

    from finetune.dpo import dpo, make_dpo_trainer, read_pairs
    from finetune.pairs import export
    from finetune.base import resolve_base

    base_dir, sft = tiny
    out = tmp_path / "pairs.jsonl"
    export(logged, out, rag=None, questions=0, echo=lambda s: None)
    settings = logged.model_copy(update={"finetune": logged.finetune.model_copy(
        update={"base_model": str(base_dir), "runs_dir": tmp_path / "runs", "grad_accum": 1})})
    pairs = read_pairs(out)
    trainer = make_dpo_trainer(settings, pairs, sft, resolve_base(settings), tmp_path / "probe", max_steps=1,
                               beta=0.1, learning_rate=1e-3, max_length=512, progress=False)
    assert len(trainer.train_dataset) == 2 and "chosen_ids" in trainer.train_dataset.column_names, \
        "TRL tokenized every exported pair"
    assert "ref" in trainer.model.peft_config, "the reference is a frozen copy of the SFT adapter, not the bare base"

    result = dpo(settings, out, sft, run_id="tiny-dpo", max_steps=16, beta=0.1, learning_rate=5e-3, max_length=512,
                 progress=False, echo=lambda s: None)
    record = json.loads((result.run_dir / "run.json").read_text())
    margins = record["reward_margins"]
    assert len(margins) == 16 and abs(margins[0]) < 1e-3, "step 1 starts from the reference: no margin yet"
    assert margins[-1] > margins[0] + 0.05, f"DPO widened the chosen-minus-rejected margin: {margins}"
    assert record["beta"] == 0.1 and record["pairs_by_source"] == {"correction": 1, "ratings": 1, "self": 0}
    assert (result.run_dir / "margins.png").stat().st_size > 1000
    trained, started = load_file(result.adapter / "adapter_model.safetensors"), load_file(sft / "adapter_model.safetensors")
    assert trained.keys() == started.keys(), "only the policy adapter is saved, under the SFT adapter's names"
    assert any(not torch.equal(trained[k], started[k]) for k in trained), "the SFT adapter's own weights moved"


def recorded_rows() -> dict[str, dict]:
    """The shipped Gemma adapter's measured rows per set, from the committed report."""
    from evals.promote import by_set

    results = json.loads((REPO / "reports" / "latest" / "results.json").read_text(encoding="utf-8"))
    rows = by_set(results, "atlas-rag-lora-gemma3")
    assert set(rows) == {"dev", "heldout"}
    return rows


def changed(rows: dict, set_name: str, **deltas) -> dict:
    out = {k: dict(v) for k, v in rows.items()}
    for metric, d in deltas.items():
        out[set_name][metric] = (out[set_name][metric] or 0) + d if d is not None else None
    return out


@pytest.mark.parametrize("set_name, deltas, failed", [
    ("heldout", {"fact_recall": 0.01, "token_f1": 0.05}, []),
    ("dev", {"fact_recall": -0.019, "language_match": -0.02}, []),  # within the tolerance
    ("heldout", {"fact_recall": -0.03}, ["heldout fact_recall"]),
    ("dev", {"false_refusal_rate": 0.03, "citation_precision": -0.05}, ["dev citation_precision", "dev false_refusal_rate"]),
    ("dev", {"refusal_accuracy": None}, ["dev refusal_accuracy"]),  # unmeasured: never promoted
])
def test_the_gate_promotes_only_a_candidate_no_worse_on_every_set_and_metric(set_name, deltas, failed):
    from evals.promote import decide, markdown

    current = recorded_rows()
    decision = decide(current, changed(current, set_name, **deltas))
    assert decision["failed"] == failed and decision["promote"] is (not failed)
    assert decision["winner"] == ("current" if failed else "candidate")
    assert len(decision["checks"]) == 12, "six metrics on each of the two sets"
    table = markdown(decision, "runs/x/adapter", "adapters/gemma3")
    assert ("NO" in table) is bool(failed) and f"winner: **{decision['winner']}**" in table


def test_promotion_switches_what_is_served_and_rollback_switches_it_back(tmp_path):
    import shutil

    from serve.bases import lora_models
    from serve.promoted import current, promote, rollback, serving_settings

    settings = make_settings(tmp_path / "data")
    assert serving_settings(settings) is settings and current(settings) is None
    runs = []
    for name in ("first", "second"):
        run = tmp_path / "runs" / name
        shutil.copytree(REPO / "adapters" / "gemma3", run / "adapter")
        runs.append(promote(settings, run / "adapter", {"winner": "candidate", "run": name}))
    root = settings.data_dir / "adapters"
    assert current(settings) == runs[1] and (root / "previous").resolve() == runs[0]
    assert json.loads((runs[1] / "promotion.json").read_text())["run"] == "second"
    served = dict(lora_models(serving_settings(settings).llm).values())
    assert served["gemma3"] == runs[1], "the server prefers the promoted adapter over adapters/gemma3"
    assert rollback(settings) == runs[0] and current(settings) == runs[0]
    assert (root / "previous").resolve() == runs[1], "a rollback can itself be undone"
    assert not list(root.glob(".*.tmp")) and not list((root / "versions").glob(".*")), "no half-written leftovers"


def test_the_gate_decides_from_a_report_only_when_it_measured_these_two_adapters(tmp_path):
    import shutil

    from evals.errors import EvalError
    from evals.promote import gate_from_report

    settings = make_settings(tmp_path / "data", llm={"adapters": {"gemma3": "adapters/gemma3"}})
    run = tmp_path / "runs" / "dpo"
    shutil.copytree(REPO / "adapters" / "gemma3", run / "adapter")
    results = json.loads((REPO / "reports" / "latest" / "results.json").read_text(encoding="utf-8"))
    report = tmp_path / "report"
    report.mkdir()
    # the committed report measured adapters/gemma3 only: it says nothing about this candidate
    (report / "results.json").write_text(json.dumps(results), encoding="utf-8")
    with pytest.raises(EvalError, match="did not measure"):
        gate_from_report(settings, run / "adapter", report, "atlas-rag-lora-gemma3-dpo", run / "gate")
    # the same rows relabelled as a side-by-side run of both adapters: the same figures, so it is promoted
    rival = [{**r, "config": "atlas-rag-lora-gemma3-dpo"} for r in results["summary"]["by_set"]
             if r["config"] == "atlas-rag-lora-gemma3"]
    results["summary"]["by_set"] += rival
    results["notes"].append(f"atlas-rag-lora-gemma3-dpo: adapter {run / 'adapter'} (5.6 MiB; run dpo)")
    (report / "results.json").write_text(json.dumps(results), encoding="utf-8")
    decision = gate_from_report(settings, run / "adapter", report, "atlas-rag-lora-gemma3-dpo", run / "gate")
    assert decision["promote"] and decision["current"] == "adapters/gemma3"
    assert "winner: **candidate**" in (run / "gate" / "gate.md").read_text()

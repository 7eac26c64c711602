"""Engines over real servers: the openai engine against llama.cpp's OpenAI server; the vllm launcher via a stand-in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from conftest import free_port

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def llama_server():
    from serve.engines import bundled_gguf

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf()), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "4096"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def with_llm(settings, **update):
    return settings.model_copy(update={"llm": settings.llm.model_copy(update=update)})


def test_openai_engine_answers_through_a_real_openai_server(corpus_index, rag, llama_server):
    from serve import RagEngine

    settings = with_llm(corpus_index, engine="openai", base_url=llama_server, model="smollm2")
    remote = RagEngine(settings, retriever=rag.retriever)
    out = remote.complete("atlas-rag", [{"role": "user", "content": "What is LoRA?"}], max_tokens=24)
    assert out["choices"][0]["message"]["content"]
    assert out["sources"] and out["sources"][0]["doc_id"] in {"lora", "dora", "qlora", "lora-vs-full-ft"}
    closed = remote.complete("atlas-base", [{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert closed["choices"][0]["message"]["content"] and closed["sources"] == []
    assert remote.engine().ready()
    remote.close()


STANDIN = """\
#!{python}
# A stand-in for `vllm serve`: records its argv, then serves the bundled GGUF with llama.cpp's OpenAI server.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["VLLM_ARGV_FILE"], "a") as f:
    f.write(json.dumps(args) + "\\n")
port = args[args.index("--port") + 1]
os.execv(sys.executable, [sys.executable, "-m", "llama_cpp.server", "--model", os.environ["STANDIN_GGUF"],
                          "--host", "127.0.0.1", "--port", port, "--n_ctx", "2048"])
"""


def tiny_adapter(folder, base_id: str, hidden: int = 576, r: int = 8):
    """A valid peft LoRA folder for `base_id` (one q_proj pair): what vLLM's --lora-modules is pointed at."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": base_id, "r": r, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": np.zeros((r, hidden), np.float32),
               f"{prefix}.lora_B.weight": np.zeros((hidden, r), np.float32)}, str(folder / "adapter_model.safetensors"))
    return folder


def test_vllm_launcher_flags_lifecycle_and_adapter(corpus_index, rag, tmp_path, monkeypatch):
    from serve import RagEngine
    from serve.engines import bundled_gguf

    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vllm"
    exe.write_text(STANDIN.format(python=sys.executable))
    exe.chmod(0o755)
    argv_file = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VLLM_ARGV_FILE", str(argv_file))
    monkeypatch.setenv("STANDIN_GGUF", str(bundled_gguf()))
    adapter = tiny_adapter(tmp_path / "adapter", "HuggingFaceTB/SmolLM2-135M-Instruct")
    port = free_port()
    settings = with_llm(corpus_index, engine="vllm", model="HuggingFaceTB/SmolLM2-135M-Instruct", vllm_port=port,
                        vllm_tensor_parallel_size=2, vllm_max_model_len=4096, vllm_gpu_memory_utilization=0.7,
                        vllm_startup_timeout_s=120, adapter=adapter)
    engine = RagEngine(settings, retriever=rag.retriever)
    try:
        out = engine.complete("atlas-rag", [{"role": "user", "content": "What is BitFit?"}], max_tokens=16)
        assert out["choices"][0]["message"]["content"] and out["sources"]
        launcher = engine.engine().launcher
        proc = launcher.proc
        assert proc is not None and proc.poll() is None
        engine.engine(adapter=True)  # the adapter engine reuses the same child process
        runs = [json.loads(line) for line in argv_file.read_text().splitlines()]
        assert len(runs) == 1
        args = runs[0]
        assert args[:2] == ["serve", "HuggingFaceTB/SmolLM2-135M-Instruct"]
        flag = lambda name: args[args.index(name) + 1]  # noqa: E731
        assert flag("--port") == str(port) and flag("--host") == "127.0.0.1"
        assert flag("--tensor-parallel-size") == "2" and flag("--max-model-len") == "4096"
        assert flag("--gpu-memory-utilization") == "0.7"
        assert "--enable-lora" in args and flag("--lora-modules") == f"atlas-rag-lora={adapter}"
    finally:
        engine.close()
    assert proc.wait(timeout=30) is not None, "the child is stopped on close"


def test_vllm_start_failure_is_reported_and_cleaned_up(corpus_index, rag, tmp_path, monkeypatch):
    from serve import EngineUnavailable, RagEngine

    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vllm"
    exe.write_text(f"#!{sys.executable}\nimport sys\nprint('CUDA not available', file=sys.stderr)\nsys.exit(3)\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    settings = with_llm(corpus_index, engine="vllm", model="m", vllm_port=free_port(), vllm_startup_timeout_s=30)
    with pytest.raises(EngineUnavailable, match="exited with code 3"):
        RagEngine(settings, retriever=rag.retriever).engine()


def test_vllm_refuses_an_adapter_for_another_base(corpus_index, rag, tmp_path):
    from finetune import AdapterError
    from serve.engines.vllm import VLLMEngine

    adapter = tiny_adapter(tmp_path / "adapter", "meta-llama/Llama-2-7b-hf")
    settings = with_llm(corpus_index, engine="vllm", model="HuggingFaceTB/SmolLM2-135M-Instruct", adapter=adapter)
    with pytest.raises(AdapterError, match="trained on"):
        VLLMEngine(settings, adapter=True)


def test_transformers_engine_runs_the_bundled_model(corpus_index, rag):
    from serve import RagEngine

    settings = with_llm(corpus_index, engine="transformers")
    engine = RagEngine(settings, retriever=rag.retriever)
    out = engine.complete("atlas-base", [{"role": "user", "content": "Name one parameter-efficient method."}], max_tokens=8)
    assert out["choices"][0]["message"]["content"]
    engine.close()



def test_transformers_engine_stops_generating_when_the_caller_stops_reading(corpus_index):
    import threading

    from serve.engines import GenerationParams
    from serve.engines.hf import TransformersEngine

    engine = TransformersEngine(with_llm(corpus_index, engine="transformers"))
    msgs = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
    params = GenerationParams(max_tokens=96)
    t0 = time.perf_counter()
    full = list(engine.stream(msgs, params))
    full_s = time.perf_counter() - t0
    threads = threading.active_count()
    stream = engine.stream(msgs, params)
    next(stream), next(stream)
    t0 = time.perf_counter()
    stream.close()  # what the grounding check does when the opening sentence fails
    assert threading.active_count() == threads, "the generate() worker has ended, not run on to max_tokens"
    assert len(full) > 40 and time.perf_counter() - t0 < full_s / 4



class ScriptedEngine:
    """The one edge faked here: a model that replies with a fixed text, to drive the grounding policy exactly."""

    name, n_ctx = "scripted", 8192

    def __init__(self, reply: str):
        self.reply = reply

    def stream(self, messages, params):
        first, *rest = self.reply.split(" ")
        yield first
        yield from (" " + w for w in rest)

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


QLORA_Q = "How much GPU memory did QLoRA need to fine-tune a 65B model?"


def test_a_generated_sentence_must_restate_a_passage_sentence_that_answers_the_question(rag):
    llm = rag.settings.llm
    g = rag.prepare("atlas-rag", [{"role": "user", "content": QLORA_Q}]).grounder
    ranked = g.ranked
    top = llm.grounding_top_sentences
    assert g.support(f"{ranked[0].text} [{ranked[0].n}]", llm.grounding_overlap, llm.grounding_similarity, top)[0]
    # a sentence the passages state, far down the question's ranking: true, and supported without the gate...
    true_elsewhere = [s for s in ranked[top:] if g.support(f"{s.text} [{s.n}]", llm.grounding_overlap,
                                                            llm.grounding_similarity)[0]]
    assert true_elsewhere
    # ...but it does not answer the question, so a generated answer may not consist of it
    s = true_elsewhere[-1]
    assert not g.support(f"{s.text} [{s.n}]", llm.grounding_overlap, llm.grounding_similarity, top)[0]


@pytest.mark.parametrize("threshold, mode", [(0.01, "extractive"), (99.0, "refused")])
def test_the_models_no_answer_stands_only_when_retrieval_is_not_confident(corpus_index, rag, threshold, mode):
    from serve import RagEngine
    from serve.prompt import NO_ANSWER

    engine = RagEngine(with_llm(corpus_index, model_refusal_below=threshold), engine=ScriptedEngine(NO_ANSWER["en"]),
                       retriever=rag.retriever)
    out = engine.complete("atlas-rag", [{"role": "user", "content": QLORA_Q}], max_tokens=32)
    assert out["grounding"]["mode"] == mode
    text = out["choices"][0]["message"]["content"]
    assert (text == NO_ANSWER["en"]) is (mode == "refused")
    if mode == "extractive":  # the passages are quoted instead, each sentence with its [n]
        assert "48 GB" in text and re.search(r"\[\d\]", text)

"""Engines over real servers: the openai engine against llama.cpp's OpenAI server; the vllm launcher via a stand-in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import numpy as np
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

    def __init__(self, reply: str, *later: str):
        self.replies = [reply, *later]  # one per call; the last one repeats
        self.asked: list[list[dict]] = []  # the messages of each call

    def stream(self, messages, params):
        self.asked.append(messages)
        first, *rest = self.replies[min(len(self.asked), len(self.replies)) - 1].split(" ")
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


@pytest.mark.parametrize("lang", ["en", "ru"])
@pytest.mark.parametrize("threshold, mode", [(0.01, "extractive"), (99.0, "refused")])
def test_the_models_no_answer_stands_only_when_retrieval_is_not_confident(corpus_index, rag, threshold, mode, lang):
    from serve import RagEngine
    from serve.prompt import NO_ANSWER

    engine = RagEngine(with_llm(corpus_index, model_refusal_below=threshold, model_refusal_below_ru=threshold,
                                generate_languages=["en", "ru"]),
                       engine=ScriptedEngine(NO_ANSWER[lang]), retriever=rag.retriever)
    question = QLORA_Q if lang == "en" else "Сколько памяти GPU понадобилось QLoRA для дообучения модели 65B?"
    out = engine.complete("atlas-rag", [{"role": "user", "content": question}], max_tokens=32)
    assert out["grounding"]["mode"] == mode  # a Russian "no answer" is recognised as one too
    text = out["choices"][0]["message"]["content"]
    assert (text == NO_ANSWER[lang]) is (mode == "refused")
    if mode == "extractive":  # the passages are quoted instead, each sentence with its [n]
        assert "48 GB" in text and re.search(r"\[\d\]", text)
        assert out["grounding"]["asked_again"]  # the model was asked once more, and declined again
        assert text.startswith("Из источников: ") is (lang == "ru")  # quotes in English, said in Russian


def test_a_model_that_declines_what_retrieval_is_sure_of_is_asked_once_more_without_the_way_out(corpus_index, rag):
    """A small model says "no answer" to answerable questions: above model_refusal_below it is asked again, the same
    prompt without the decline clause, and that answer goes through the same check."""
    from serve import RagEngine
    from serve.prompt import NO_ANSWER

    answer = "QLoRA fine-tunes a 65B parameter model on a single 48 GB GPU while keeping 16-bit fine-tuning quality."
    scripted = ScriptedEngine(NO_ANSWER["en"], answer)
    engine = RagEngine(with_llm(corpus_index, model_refusal_below=0.01), engine=scripted, retriever=rag.retriever)
    out = engine.complete("atlas-rag", [{"role": "user", "content": QLORA_Q}], max_tokens=64)
    assert out["grounding"]["mode"] == "generated" and out["grounding"]["asked_again"], out["grounding"]
    assert "48 GB" in out["choices"][0]["message"]["content"] and NO_ANSWER["en"] not in out["choices"][0]["message"]["content"]
    first, second = (m[0]["content"] for m in scripted.asked)
    assert "reply exactly" in first and "reply exactly" not in second and second in first
    assert scripted.asked[0][1:] == scripted.asked[1][1:]  # only the way out is gone

    # retrieval not confident: the "no" stands, and the model is not asked twice
    scripted = ScriptedEngine(NO_ANSWER["en"], answer)
    engine = RagEngine(with_llm(corpus_index, model_refusal_below=99.0), engine=scripted, retriever=rag.retriever)
    out = engine.complete("atlas-rag", [{"role": "user", "content": QLORA_Q}], max_tokens=64)
    assert out["grounding"]["mode"] == "refused" and not out["grounding"]["asked_again"] and len(scripted.asked) == 1


def test_russian_questions_have_their_own_refusal_bar(corpus_index, rag):
    from serve import RagEngine
    from serve.prompt import NO_ANSWER

    question = "Сколько памяти GPU понадобилось QLoRA для дообучения модели 65B?"
    for ru_bar, mode in [(99.0, "refused"), (0.01, "extractive")]:
        settings = with_llm(corpus_index, model_refusal_below=0.01, model_refusal_below_ru=ru_bar,
                            generate_languages=["en", "ru"])
        engine = RagEngine(settings, engine=ScriptedEngine(NO_ANSWER["ru"]), retriever=rag.retriever)
        out = engine.complete("atlas-rag", [{"role": "user", "content": question}], max_tokens=32)
        assert out["grounding"]["mode"] == mode, (ru_bar, out["grounding"])


# ---------------------------------------------------------------- readiness, faults and the remote contract


class CountingUpstream:
    """The edge faked here: an OpenAI-compatible endpoint that counts its requests, can be made slow, and answers
    POSTs with `post` = (status, body)."""

    def __init__(self, post: tuple[int, dict] | None = None):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading

        self.hits: list[str] = []
        self.delay_s = 0.0
        self.post = post
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                upstream.hits.append(f"{self.command} {self.path}")
                time.sleep(upstream.delay_s)
                status, body = 200, {"object": "list", "data": [{"id": "m", "object": "model"}]}
                if self.command == "POST" and upstream.post:
                    self.rfile.read(int(self.headers.get("content-length", 0)))
                    status, body = upstream.post
                body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_openai_readiness_asks_get_models_within_2s_cached_5s_and_never_generates(corpus_index, rag):
    from fastapi.testclient import TestClient

    from serve import RagEngine, create_app
    from serve.engines.openai import OpenAIEngine

    upstream = CountingUpstream()
    try:
        settings = with_llm(corpus_index, engine="openai", base_url=upstream.url, model="m")
        remote = RagEngine(settings, engine=OpenAIEngine(settings), retriever=rag.retriever)
        with TestClient(create_app(settings, rag=remote, start=False, ui=False)) as c:
            assert c.get("/health").json()["status"] == "ok"
            assert c.get("/health").status_code == 200
            assert upstream.hits == ["GET /v1/models"], "one GET /models for both checks, no generation"
            upstream.delay_s = 4.0
            remote.engine()._ready = None  # the 5 s cache has run out
            t0 = time.monotonic()
            r = c.get("/health")
            assert r.status_code == 503 and time.monotonic() - t0 < 3.5, "a slow /models is a failed check after 2 s"
            assert "openai engine" in r.json()["error"]
    finally:
        upstream.delay_s = 0
        upstream.close()


def test_health_is_503_when_the_remote_engine_is_down(corpus_index, rag):
    from fastapi.testclient import TestClient

    from serve import RagEngine, create_app
    from serve.engines.openai import OpenAIEngine

    settings = with_llm(corpus_index, engine="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m")
    dead = RagEngine(settings, engine=OpenAIEngine(settings), retriever=rag.retriever)
    with TestClient(create_app(settings, rag=dead, start=False, ui=False)) as c:
        r = c.get("/health")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and "unreachable" in r.json()["error"]


@pytest.mark.parametrize("status, error, code", [
    (400, {"message": "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens",
           "type": "invalid_request_error", "code": "context_length_exceeded"}, "context_length_exceeded"),
    (422, {"message": "temperature: must be at most 1.0", "type": "invalid_request_error"}, "upstream_rejected"),
])
def test_a_remote_4xx_stays_a_4xx(corpus_index, rag, status, error, code):
    from fastapi.testclient import TestClient

    from serve import RagEngine, create_app

    upstream = CountingUpstream(post=(status, {"error": error}))
    try:
        settings = with_llm(corpus_index, engine="openai", base_url=upstream.url, model="m")
        remote = RagEngine(settings, retriever=rag.retriever)
        with TestClient(create_app(settings, rag=remote, start=False, ui=False)) as c:
            r = c.post("/v1/chat/completions", json={"model": "atlas-base", "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": "Hello"}]})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code and f"answered {status}" in r.json()["error"]["message"]
    finally:
        upstream.close()


def test_an_empty_remote_stream_is_an_error_not_an_empty_answer(corpus_index, rag, llama_server):
    from serve import EngineUnavailable, RagEngine

    # llama.cpp's server answers a too-long *streamed* request with 200 and no events (its 400 is lost): we believe
    # the context is 32k, the server (n_ctx 4096) knows better.
    settings = with_llm(corpus_index, engine="openai", base_url=llama_server, model="smollm2", n_ctx=32768)
    remote = RagEngine(settings, retriever=rag.retriever)
    with pytest.raises(EngineUnavailable, match="without an answer"):
        remote.complete("atlas-base", [{"role": "user", "content": "adapter rank " * 3000}], max_tokens=8)
    remote.close()


def test_vllm_validates_the_adapter_before_launch_and_takes_its_own_rank(corpus_index, tmp_path, monkeypatch):
    from finetune import AdapterError
    from serve import EngineUnavailable, RagEngine
    from serve.engines import vllm

    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vllm"  # records its argv and fails: what matters is the command line it was given
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   "open(os.environ['VLLM_ARGV_FILE'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\nsys.exit(3)\n")
    exe.chmod(0o755)
    argv_file = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VLLM_ARGV_FILE", str(argv_file))
    base = "HuggingFaceTB/SmolLM2-135M-Instruct"

    def launch(adapter) -> list[str]:
        settings = with_llm(corpus_index, engine="vllm", model=base, vllm_port=free_port(), vllm_startup_timeout_s=30,
                            adapter=adapter)
        settings = settings.model_copy(update={"finetune": settings.finetune.model_copy(update={"lora_r": 16})})
        engine = RagEngine(settings)
        with pytest.raises(EngineUnavailable, match="exited with code 3"):
            engine.engine()  # the base engine launches first, as at start-up
        vllm._launchers.clear()
        return json.loads(argv_file.read_text().splitlines()[-1])

    wide = tiny_adapter(tmp_path / "wide", base, r=32)
    args = launch(wide)
    assert args[args.index("--max-lora-rank") + 1] == "32", "the adapter's own r, not finetune.lora_r"
    assert args[args.index("--lora-modules") + 1] == f"atlas-rag-lora={wide}"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (broken / "adapter_model.bin").write_bytes(b"pickle, not safetensors")
    args = launch(broken)
    assert "--enable-lora" not in args and "--lora-modules" not in args, "a broken adapter is never launched"
    settings = with_llm(corpus_index, engine="vllm", model=base, vllm_port=free_port(), adapter=broken)
    with pytest.raises(AdapterError, match="pickled"):
        RagEngine(settings).engine(adapter=True)


@pytest.fixture(scope="module")
def hf_engine(corpus_index):
    from serve.engines.hf import TransformersEngine

    engine = TransformersEngine(with_llm(corpus_index, engine="transformers", timeout_s=30))
    yield engine
    engine.close()


def hf_params(**kw):
    from serve.engines import GenerationParams

    return GenerationParams(**{"max_tokens": 24, "temperature": 0.0, "repeat_penalty": 1.15, **kw})


HF_MESSAGES = [{"role": "user", "content": "List three colours, separated by commas."}]


def test_transformers_generate_failure_is_a_503_and_releases_the_lock(hf_engine, monkeypatch):
    import threading

    from serve import EngineUnavailable

    def broken(**kwargs):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(hf_engine.model, "generate", broken)
    outcome = {}

    def call():
        try:
            outcome["text"] = "".join(hf_engine.stream(HF_MESSAGES, hf_params()))
        except Exception as e:  # noqa: BLE001 - the exception is what is checked
            outcome["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "the caller hung waiting for a worker that had died"
    assert isinstance(outcome.get("error"), EngineUnavailable) and "out of memory" in str(outcome["error"])
    assert outcome["error"].status == 503
    monkeypatch.undo()
    assert hf_engine._lock.acquire(timeout=1), "the lock was released"
    hf_engine._lock.release()
    assert "".join(hf_engine.stream(HF_MESSAGES, hf_params(max_tokens=4)))


def test_transformers_stop_strings_end_generation_and_keep_the_text_before_them(hf_engine, monkeypatch):
    free = "".join(hf_engine.stream(HF_MESSAGES, hf_params()))
    words = free.split()
    assert len(words) >= 4, free
    # a stop string that starts inside a word: the streamer delivers that word and the stop string in one delta
    word = next(w for w in words[1:] if len(w) >= 4)
    at = free.index(word, len(words[0])) + 2
    stop = free[at:at + 2]
    assert free.find(stop) == at, "pick a stop string that occurs first there"

    generated = []
    real = hf_engine.model.generate

    def spy(**kwargs):
        out = real(**kwargs)
        generated.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(hf_engine.model, "generate", spy)
    cut = "".join(hf_engine.stream(HF_MESSAGES, hf_params(stop=[stop])))
    assert cut == free[:at], "the text before the stop string, in the same delta, is kept"
    full = hf_engine.count_tokens(free)
    assert generated and generated[0] < full, "generation itself stopped at the stop string"


def test_transformers_close_frees_the_model(hf_engine):
    import gc
    import weakref

    ref = weakref.ref(hf_engine.model)
    assert hf_engine.ready()
    hf_engine.close()
    gc.collect()
    assert ref() is None, "the model's memory is released"
    assert not hf_engine.ready() and "closed" in hf_engine.ready().reason


def test_a_russian_sentence_meets_an_english_passage_through_its_terms_and_figures(embedder):
    from serve.grounding import Grounder
    from serve.retrieval import Passage

    text = ("BitFit trains only the bias terms of the model, about 0.1% of the parameters. "
            "Adapters insert small bottleneck layers after each attention block.")
    passages = [Passage("c1", "bitfit", "BitFit", "Method", "bitfit.md", text, 1.0, "en")]
    glossary = {"обучает": "trains", "смещения": "bias terms", "параметров": "parameters", "модели": "model"}

    def translate(s: str) -> str:
        return " ".join(en for ru, en in glossary.items() if ru in s)

    said = "BitFit обучает только смещения модели, около 0,1% параметров [1]."
    plain = Grounder(embedder, "Что обучает BitFit?", passages)
    both = Grounder(embedder, "Что обучает BitFit?", passages, translate=translate)
    assert not plain.support(said, 0.6, 0.5, 6)[0]  # Russian words never meet English ones
    assert both.support(said, 0.6, 0.5, 6)[0]
    # the check is still a check: a wrong figure, or another method's claim, fails across languages too
    assert not both.support("BitFit обучает только смещения модели, около 5% параметров [1].", 0.6, 0.5, 6)[0]
    assert not both.support("BitFit обучает LoRA матрицы ранга r в каждом слое [1].", 0.6, 0.5, 6)[0]


def test_passage_sentences_are_embedded_once_across_questions(embedder):
    from serve.grounding import Grounder, SentenceVectors
    from serve.retrieval import Passage

    class Counting:
        def __init__(self, inner):
            self.inner, self.texts = inner, 0

        def encode(self, texts):
            self.texts += len(texts)
            return self.inner.encode(texts)

    counting = Counting(embedder)
    passages = [Passage("c1", "lora", "LoRA", "Method", "lora.md", "LoRA freezes the weights. It trains A and B.", 1.0),
                Passage("c2", "bitfit", "BitFit", "Method", "bitfit.md", "BitFit trains only the biases.", 0.9)]
    first = Grounder(counting, "What does LoRA train?", passages)
    assert counting.texts == 1 + 3  # the question and three sentences
    second = Grounder(counting, "What does BitFit train?", passages)
    assert counting.texts == 1 + 3 + 1  # only the new question: the sentences' vectors are remembered
    for a, b in zip(first.sentences, second.sentences):
        assert np.allclose(a.vec, b.vec, atol=1e-5)
    assert np.allclose(second.sentences[0].vec, embedder.encode(["LoRA freezes the weights."])[0], atol=1e-5)
    small = SentenceVectors(embedder, size=2)
    small.encode(["a b", "c d", "e f"])
    assert list(small._vecs) == ["c d", "e f"]  # least recently used first out: the cache stays bounded

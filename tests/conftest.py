"""Shared fixtures: offline env, test settings, the bundled embedder and the corpus index, each built once."""

from __future__ import annotations

import os

for _k, _v in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_k] = _v
for _k in [k for k in os.environ if k.startswith("FTATLAS_")]:
    del os.environ[_k]  # the developer's own overrides must not leak into tests

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ftatlas.settings import load_settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_settings(data_dir: Path, **sections):
    """Test-profile settings over the real repo, with their own data folder and any section overrides."""
    ingest = {"data_dir": str(data_dir), **sections.pop("ingest", {})}
    return load_settings("test", root=REPO, ingest=ingest, **sections)


@pytest.fixture(scope="session")
def embedder():
    from ingest.embedder import Embedder

    return Embedder("bundled")


@pytest.fixture(scope="session")
def corpus_settings(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("corpus-index"))


@pytest.fixture(scope="session")
def corpus_index(corpus_settings, embedder):
    """The shipped corpus ingested once per session; tests must not modify it."""
    from ingest import ingest

    summary = ingest(corpus_settings, embedder=embedder, progress=False)
    assert not summary.failed, summary.failed
    return corpus_settings


def tiny_llama(folder: Path, tok) -> Path:
    """A 2-layer, hidden-32 Llama with `tok`'s vocabulary, built from a config and saved with it as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def engine_probe(corpus_settings):
    """The CLI's start-up probe, once: if the native engine dies in a child, every test that generates fails with
    the probe's one line (pytest caches a session fixture's error), and the rest of the suite still runs."""
    from serve.engines.probe import probe_command, run_probe

    result = run_probe(probe_command(corpus_settings))
    if not result.ok:
        pytest.fail(result.message, pytrace=False)
    return result


@pytest.fixture(scope="session")
def rag(engine_probe, corpus_index, embedder):
    """One RagEngine over the corpus index with the real bundled llama.cpp model, shared by the session."""
    from serve import RagEngine

    engine = RagEngine(corpus_index, embedder=embedder)
    yield engine
    engine.close()


class LiveServer:
    """uvicorn serving an app on a free 127.0.0.1 port in a thread; stopped by the fixture."""

    def __init__(self, app):
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        import time

        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/health", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("live server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(engine_probe, corpus_index, rag, embedder):
    """The real app (API + UI) over the session's index and engine, on a real port."""
    from serve import create_app

    server = LiveServer(create_app(corpus_index, rag=rag, start=False, embedder=embedder))
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Only tests marked `gpu` may skip: any other skip (a missing tool, a guard that is always true) fails the run."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("gpu") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but only tests marked gpu may skip: {reason}"


def pytest_collectreport(report):
    """A module that skips itself at import (importorskip) fails too."""
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"module skipped, but only tests marked gpu may skip: {reason}"

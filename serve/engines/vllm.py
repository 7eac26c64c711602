"""`llm.engine: vllm`: start `vllm serve` as a child process, wait for /health, talk to it as an OpenAI endpoint."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from ..errors import EngineUnavailable
from .base import Readiness
from .openai import OpenAIEngine

LORA_NAME = "atlas-rag-lora"
MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for --max-lora-rank


def max_lora_rank(info) -> int:
    """--max-lora-rank for a validated adapter: its own largest rank, rounded up to a value vLLM accepts.

    Example: r=4 -> 8; r=24 -> 32; r=8 with rank_pattern {'q_proj': 64} -> 64.
    """
    import json

    cfg = json.loads((info.path / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [int(info.r)] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()]
    return next((m for m in MAX_LORA_RANKS if m >= max(ranks)), max(ranks))


def vllm_argv(settings, port: int, lora_rank: int | None = None) -> list[str]:
    """The command line; the adapter's flags only with its rank (it was validated first).

    Example: model 'm', no adapter -> ['vllm', 'serve', 'm', '--host', '127.0.0.1', '--port', '8001', ...]."""
    llm = settings.llm
    argv = [
        "vllm", "serve", llm.model, "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", llm.model,
        "--tensor-parallel-size", str(llm.vllm_tensor_parallel_size),
        "--max-model-len", str(llm.vllm_max_model_len),
        "--gpu-memory-utilization", str(llm.vllm_gpu_memory_utilization),
    ]
    if llm.adapter and lora_rank:
        argv += ["--enable-lora", "--lora-modules", f"{LORA_NAME}={settings.path(llm.adapter)}",
                 "--max-lora-rank", str(lora_rank)]
    return argv


class VLLMLauncher:
    """Owns the child process: started once, stopped on close, at exit, and on errors during start-up.

    The adapter (llm.adapter) is validated before the first launch: a valid one is launched with its own rank, a
    broken one is left out of the command line and its error kept for the adapter engine to raise.
    """

    def __init__(self, settings):
        self.settings = settings
        self.port = settings.llm.vllm_port
        self.proc: subprocess.Popen | None = None
        self.log_path = settings.data_dir / "vllm.log"
        self.lora_rank: int | None = None
        self.adapter_error: Exception | None = None
        if settings.llm.adapter:
            from ..adapter import validate_adapter
            from ..errors import AdapterError

            try:
                self.lora_rank = max_lora_rank(validate_adapter(settings.path(settings.llm.adapter), settings.llm.model))
            except (AdapterError, OSError, ValueError) as e:
                self.adapter_error = e

    def start(self) -> None:
        if self.proc and self.proc.poll() is None:
            return
        if not shutil.which("vllm"):
            raise EngineUnavailable("vllm engine: the `vllm` executable is not on PATH (install the `gpu` extra on a CUDA host)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(vllm_argv(self.settings, self.port, self.lora_rank), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.llm.vllm_startup_timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""
                raise EngineUnavailable(f"vllm exited with code {self.proc.returncode} during start-up:\n{tail}")
            try:
                status = httpx.get(url, timeout=2.0).status_code
                if status == 404:  # an OpenAI-compatible stand-in without /health: ready once it lists models
                    status = httpx.get(url.replace("/health", "/v1/models"), timeout=2.0).status_code
                if status == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise EngineUnavailable(f"vllm did not become healthy on port {self.port} within "
                                f"{self.settings.llm.vllm_startup_timeout_s:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)


_launchers: dict[int, VLLMLauncher] = {}


class VLLMEngine(OpenAIEngine):
    name = "vllm"

    def __init__(self, settings, adapter: bool = False):
        launcher = _launchers.get(settings.llm.vllm_port)
        if launcher is None:
            launcher = _launchers[settings.llm.vllm_port] = VLLMLauncher(settings)
        if adapter and launcher.adapter_error:
            raise launcher.adapter_error
        launcher.start()
        self.launcher = launcher
        super().__init__(settings, adapter=adapter, base_url=f"http://127.0.0.1:{launcher.port}/v1",
                         model=LORA_NAME if adapter else settings.llm.model)

    def ready(self) -> Readiness:
        proc = self.launcher.proc
        if proc is None or proc.poll() is not None:
            code = "stopped" if proc is None else f"exited with code {proc.returncode}"
            return Readiness(False, f"vllm engine: the vllm process {code} (log: {self.launcher.log_path})")
        return super().ready()

    def close(self) -> None:
        super().close()
        self.launcher.stop()
        _launchers.pop(self.launcher.port, None)

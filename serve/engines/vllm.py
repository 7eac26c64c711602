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
from .openai import OpenAIEngine

LORA_NAME = "atlas-rag-lora"


def vllm_argv(settings, port: int) -> list[str]:
    """The command line. Example: model 'm', no adapter -> ['vllm', 'serve', 'm', '--host', '127.0.0.1', '--port', '8001', ...]."""
    llm = settings.llm
    argv = [
        "vllm", "serve", llm.model, "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", llm.model,
        "--tensor-parallel-size", str(llm.vllm_tensor_parallel_size),
        "--max-model-len", str(llm.vllm_max_model_len),
        "--gpu-memory-utilization", str(llm.vllm_gpu_memory_utilization),
    ]
    if llm.adapter:
        argv += ["--enable-lora", "--lora-modules", f"{LORA_NAME}={settings.path(llm.adapter)}",
                 "--max-lora-rank", str(max(8, settings.finetune.lora_r))]
    return argv


class VLLMLauncher:
    """Owns the child process: started once, stopped on close, at exit, and on errors during start-up."""

    def __init__(self, settings):
        self.settings = settings
        self.port = settings.llm.vllm_port
        self.proc: subprocess.Popen | None = None
        self.log_path = settings.data_dir / "vllm.log"

    def start(self) -> None:
        if self.proc and self.proc.poll() is None:
            return
        if not shutil.which("vllm"):
            raise EngineUnavailable("vllm engine: the `vllm` executable is not on PATH (install the `gpu` extra on a CUDA host)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(vllm_argv(self.settings, self.port), stdout=log, stderr=subprocess.STDOUT,
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
        if adapter:
            from finetune import validate_adapter

            validate_adapter(settings.path(settings.llm.adapter), settings.llm.model)
        launcher = _launchers.get(settings.llm.vllm_port)
        if launcher is None:
            launcher = _launchers[settings.llm.vllm_port] = VLLMLauncher(settings)
        launcher.start()
        self.launcher = launcher
        super().__init__(settings, adapter=adapter, base_url=f"http://127.0.0.1:{launcher.port}/v1",
                         model=LORA_NAME if adapter else settings.llm.model)

    def close(self) -> None:
        super().close()
        self.launcher.stop()
        _launchers.pop(self.launcher.port, None)

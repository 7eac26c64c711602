"""A real `ftatlas serve` child process on a free 127.0.0.1 port with its own data folder, for the reliability bench."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .errors import ServeError


class ServerFailed(ServeError):
    """The served child did not come up, or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(settings, data_dir: Path, port: int) -> dict[str, str]:
    """The environment that makes a child `ftatlas` see exactly these settings, with its own data folder and port.

    Each section goes as one JSON value (FTATLAS_LLM='{...}'), which beats every YAML profile. MALLOC_ARENA_MAX=2
    caps glibc's per-thread malloc arenas: without it the server's RSS grows with its request threads (issue 11).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTATLAS_")}
    for section in ("ingest", "retrieval", "llm", "serve", "finetune", "evals"):
        env[f"FTATLAS_{section.upper()}"] = json.dumps(getattr(settings, section).model_dump(mode="json"))
    env["FTATLAS_INGEST__DATA_DIR"] = str(data_dir)
    env["FTATLAS_SERVE__HOST"], env["FTATLAS_SERVE__PORT"] = "127.0.0.1", str(port)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(settings.root), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def cli(settings, data_dir: Path, *args: str, **popen) -> subprocess.Popen:
    """`python -m ftatlas.cli ARGS` with the worktree's code (never the console script) and these settings."""
    port = popen.pop("port", 0)
    return subprocess.Popen([sys.executable, "-m", "ftatlas.cli", *args], cwd=settings.root,
                            env=child_env(settings, data_dir, port), **popen)


class ServedChild:
    """`ftatlas serve` in its own process group; its log goes to `log`."""

    def __init__(self, settings, data_dir: Path, log: Path):
        self.settings, self.data_dir, self.log = settings, data_dir, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300) -> "ServedChild":
        out = open(self.log, "ab")
        self.proc = cli(self.settings, self.data_dir, "serve", port=self.port, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"`ftatlas serve` exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.kill()
        raise ServerFailed(f"`ftatlas serve` not ready after {timeout_s:g} s: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_mb(self) -> float:
        """The server's resident memory with its children (the isolated llama.cpp process), in MiB."""
        import psutil

        p = psutil.Process(self.proc.pid)
        procs = [p, *p.children(recursive=True)]
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        return round(total / 2**20, 1)

    def kill(self) -> None:
        """kill -9 of the server, then of the children it leaves behind (the isolated llama.cpp process)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for child in children:
            try:
                child.kill()  # psutil checks the process is still the one it saw: no reused pid is hit
            except psutil.Error:
                pass

    def stop(self, timeout_s: float = 30) -> None:
        """A graceful stop (SIGTERM: uvicorn finishes its requests and closes the engine); kill -9 past timeout_s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

"""llama.cpp in a child process: a native crash (SIGILL, SIGSEGV) kills the child, and the server lives on to say so.

The parent keeps a vocabulary-only copy of the model for counting tokens (no compute, so nothing to crash) and
talks to the child (child.py, a fresh interpreter) over a socket pair: ("chat", messages, params) -> ("delta", text)* ("end", finish_reason).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Generator

from ..errors import EngineUnavailable
from .base import GenerationParams
from .probe import CHILD, REBUILD, describe_exit

LOAD_TIMEOUT_S = 300.0


class ProcessLlama:
    """The llamacpp engine's model, run in a child process; `dead` holds why once the child has died."""

    def __init__(self, model_path: str, n_ctx: int, n_threads: int | None, lora_path: str | None,
                 chat_format: dict | None = None):
        from llama_cpp import Llama

        self.vocab = Llama(model_path=model_path, vocab_only=True, verbose=False)
        mine, theirs = socket.socketpair()
        # A fresh interpreter running child.py by path: no fork of this threaded process, no re-import of __main__.
        self.proc = subprocess.Popen([sys.executable, str(CHILD), "worker", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(mine.detach())
        self.dead: str | None = None
        self._lock = threading.Lock()
        self._conn.send(dict(model_path=model_path, n_ctx=n_ctx, n_threads=n_threads, lora_path=lora_path,
                             verbose=False, seed=0, chat_format=chat_format))
        if not self._conn.poll(LOAD_TIMEOUT_S):
            self.close()
            raise EngineUnavailable(f"llamacpp engine: the model did not load within {LOAD_TIMEOUT_S:.0f} s")
        kind, value = self._recv()
        if kind != "ready":
            self.close()
            raise EngineUnavailable(f"llamacpp engine: cannot load {model_path}: {value}")
        self.n_ctx = int(value)

    def _recv(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            raise EngineUnavailable(self.check() or "llamacpp engine process stopped answering") from None

    def check(self) -> str | None:
        """None while the child lives; once it has died, why (the signal, its likely cause and the fix)."""
        if self.dead is None and self.proc.poll() is not None:
            code = self.proc.returncode
            hint = f" Rebuild portably: {REBUILD}" if code < 0 else ""
            self.dead = f"llamacpp engine process {describe_exit(code)}.{hint}"
        return self.dead

    def count_tokens(self, text: str) -> int:
        return len(self.vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(self, messages: list[dict], params: GenerationParams) -> Generator[str, None, str]:
        """Deltas from the child, then its finish reason; closing this generator early, or params.cancel, tells the
        child to stop decoding."""
        call = {k: getattr(params, k) for k in ("max_tokens", "temperature", "top_p", "repeat_penalty", "seed")}
        call["stop"] = list(params.stop) or None
        with self._lock:
            if self.dead:
                raise EngineUnavailable(self.dead)
            try:
                self._conn.send(("chat", messages, call))
            except (BrokenPipeError, OSError):
                self._recv()  # raises with the child's exit status
            done = False
            try:
                while True:
                    kind, value = self._recv()
                    if kind == "delta":
                        if params.cancel.is_set():  # the caller disconnected: stop the child now
                            return "stop"
                        yield value
                    elif kind == "error":
                        done = True
                        raise EngineUnavailable(f"llamacpp engine: {value}")
                    else:
                        done = True
                        return "stop" if value == "cancelled" else value
            finally:
                if not done and not self.dead:
                    self._drain()

    def _drain(self) -> None:
        """After an early close: ask the child to stop, then read up to its end so the next request starts clean."""
        try:
            self._conn.send(("stop",))
            while self._recv()[0] not in ("end", "error"):
                pass
        except (EngineUnavailable, OSError):
            pass

    def close(self) -> None:
        try:
            self._conn.send(("close",))
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._conn.close()

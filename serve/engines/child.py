"""What runs inside llama.cpp's child processes. Launched by file path, so the child imports llama_cpp and the
standard library only - never the server's packages, and never the parent's __main__.

    python child.py probe MODEL.gguf [N_THREADS]   load, generate a few tokens, print one JSON line, exit 0
    python child.py worker FD                      answer ("chat", messages, params) requests on socket FD
"""

from __future__ import annotations

import json
import sys
import time
from multiprocessing.connection import Connection

PROBE_TOKENS = 8


def probe(model: str, n_threads: int | None) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=256, n_threads=n_threads, verbose=False, seed=0)
    start = time.monotonic()
    out = llm.create_completion("Low-rank adaptation trains", max_tokens=PROBE_TOKENS, temperature=0.0)
    decode_s = time.monotonic() - start
    print(json.dumps({"tokens": out["usage"]["completion_tokens"], "decode_s": decode_s}), flush=True)


def chat_handler(fmt: dict | None):
    """llama.cpp's chat handler for {'template', 'eos', 'bos'}; None keeps the GGUF's own template."""
    if not fmt:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(fmt["template"], eos_token=fmt["eos"], bos_token=fmt["bos"],
                               add_generation_prompt=True).to_chat_handler()


def worker(conn: Connection) -> None:
    """Load once (the first message holds the Llama kwargs and the chat format), then answer until told to close."""
    from llama_cpp import Llama

    try:
        kwargs = conn.recv()
        llm = Llama(chat_handler=chat_handler(kwargs.pop("chat_format", None)), **kwargs)
    except Exception as e:  # noqa: BLE001 - the parent turns it into EngineUnavailable
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", llm.n_ctx()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if msg[0] == "close":
            return
        if msg[0] != "chat":
            continue  # a "stop" that arrived after its generation had already ended
        _, messages, params = msg
        finish = "stop"
        try:
            llm.reset()
            for chunk in llm.create_chat_completion(messages=messages, stream=True, **params):
                choice = chunk["choices"][0]
                delta = choice["delta"].get("content")
                if delta:
                    conn.send(("delta", delta))
                finish = choice.get("finish_reason") or finish
                if conn.poll() and conn.recv()[0] == "stop":  # the caller went away: stop decoding now
                    finish = "cancelled"
                    break
        except Exception as e:  # noqa: BLE001
            conn.send(("error", f"{type(e).__name__}: {e}"))
            continue
        conn.send(("end", finish))


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        probe(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "worker":
        worker(Connection(int(sys.argv[2])))
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")

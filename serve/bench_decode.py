"""`ftatlas bench decode`: llama.cpp decode tokens/s for one or more builds, interleaved in one run so ratios hold.

A build is the installed llama-cpp-python (folder '') or a `pip install --target DIR` copy; each round runs every
build once in its own child process, and the median of the rounds is reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

PROMPT = "Low-rank adaptation freezes the pretrained weights and trains two small matrices. In short,"


def parse_build(spec: str) -> tuple[str, str, bool]:
    """NAME=DIR[:no-extra-bufts]. Example: 'native=/tmp/n:no-extra-bufts' -> ('native', '/tmp/n', False)."""
    name, _, rest = spec.partition("=")
    folder, _, flag = rest.partition(":")
    if not name or flag not in ("", "no-extra-bufts"):
        raise ValueError(f"--build {spec!r}: expected NAME=DIR or NAME=DIR:no-extra-bufts")
    return name, folder, flag != "no-extra-bufts"


def run_build(folder: str, extra_bufts: bool, model: str, n_tokens: int, n_threads: int | None) -> dict:
    env = dict(os.environ)
    if folder:
        env["PYTHONPATH"] = os.pathsep.join([folder] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "serve.bench_decode", model, str(n_tokens), "1" if extra_bufts else "0", str(n_threads or 0)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"decode bench child failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(builds: list[tuple[str, str, bool]], model: str, n_tokens: int = 128, rounds: int = 3,
            n_threads: int | None = None) -> dict:
    """{name: {tokens_per_s (median), runs, system_info, extra_bufts, ratio (to the first build)}}."""
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in builds}
    for _ in range(rounds):
        for name, folder, extra in builds:
            runs[name].append(run_build(folder, extra, model, n_tokens, n_threads))
    out, first = {}, None
    for name, folder, extra in builds:
        tps = statistics.median(r["tokens_per_s"] for r in runs[name])
        first = first or tps
        out[name] = {"tokens_per_s": round(tps, 1), "runs": [round(r["tokens_per_s"], 1) for r in runs[name]],
                     "ratio": round(tps / first, 3), "extra_bufts": extra, "folder": folder or "(installed)",
                     "system_info": runs[name][0]["system_info"]}
    return out


def _child(model: str, n_tokens: int, extra_bufts: bool, n_threads: int) -> None:
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    if not extra_bufts:  # the Llama constructor does not expose it: patch the defaults it starts from
        default = lib.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = params
    llm = llama_cpp.Llama(model_path=model, n_ctx=1024, n_threads=n_threads or None, verbose=False, seed=0)
    llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)  # warm-up
    llm.reset()
    start = time.perf_counter()
    out = llm.create_completion(PROMPT, max_tokens=n_tokens, temperature=0.0, repeat_penalty=1.0)
    seconds = time.perf_counter() - start
    info = llama_cpp.llama_print_system_info()
    print(json.dumps({"tokens_per_s": out["usage"]["completion_tokens"] / seconds,
                      "system_info": (info.decode() if isinstance(info, bytes) else str(info)).strip()}))


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]))

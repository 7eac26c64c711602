"""The start-up probe: load the native model in a child process and generate a few tokens, so a crash there
(SIGILL from an instruction the CPU advertises but the machine forbids) becomes one clear line, not a dead server.

The child is `child.py probe`, launched by path; it prints one JSON line and exits 0.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REBUILD = "rm -f .venv/.installed && make install"
CHILD = Path(__file__).with_name("child.py")
_CAUSES = {
    signal.SIGILL: "an instruction the CPU advertises but this machine forbids (AMX in a VM, say): "
                   "llama.cpp was built for another CPU",
    signal.SIGSEGV: "a memory fault in native code (a damaged model file, or a build for another CPU)",
    signal.SIGBUS: "a bus error in native code (a truncated or damaged model file)",
    signal.SIGKILL: "killed from outside, most often by the kernel when memory ran out",
    signal.SIGABRT: "native code aborted (see the lines above for llama.cpp's own message)",
}


@dataclass
class ProbeResult:
    ok: bool
    message: str  # one line: what happened, and for a crash the cause and the fix
    seconds: float = 0.0
    tokens_per_s: float | None = None


def probe_command(settings) -> list[str] | None:
    """The child command that probes the configured engine, or None when the engine runs no native code here."""
    if settings.llm.engine != "llamacpp":
        return None
    from .base import resolve_model

    model = Path(settings.path(resolve_model(settings.llm.model)[0]))
    return [sys.executable, str(CHILD), "probe", str(model)] + ([str(settings.llm.n_threads)] if settings.llm.n_threads else [])


def describe_exit(returncode: int) -> str:
    """Example: -4 -> 'died with SIGILL (illegal instruction): an instruction the CPU advertises ...'."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    sig = signal.Signals(-returncode)
    cause = _CAUSES.get(sig, "a fatal signal in native code")
    return f"died with {sig.name} ({signal.strsignal(sig) or sig.name}): {cause}"


def run_probe(cmd: list[str] | None, timeout_s: float = 120.0) -> ProbeResult:
    """Run the probe command in a child and judge it; a stand-in command may be passed in tests."""
    if cmd is None:
        return ProbeResult(True, "skipped: the engine runs no native model in this process")
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"engine probe: no answer within {timeout_s:.0f} s (command: {' '.join(cmd)})",
                           time.monotonic() - start)
    except OSError as e:
        return ProbeResult(False, f"engine probe: cannot start {cmd[0]}: {e}")
    seconds = time.monotonic() - start
    if done.returncode < 0:
        return ProbeResult(False, f"engine probe {describe_exit(done.returncode)}. Rebuild portably: {REBUILD}", seconds)
    if done.returncode > 0:
        last = next((line for line in reversed(done.stderr.strip().splitlines()) if line.strip()), "no message")
        return ProbeResult(False, f"engine probe {describe_exit(done.returncode)}: {last}", seconds)
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
        tps = report["tokens"] / report["decode_s"] if report["decode_s"] > 0 else None
    except (IndexError, ValueError, KeyError, TypeError):
        return ProbeResult(False, f"engine probe: unreadable report {done.stdout.strip()[-200:]!r}", seconds)
    return ProbeResult(True, f"ok: loaded and generated {report['tokens']} tokens in {seconds:.1f} s", seconds, tps)


def amx_in_build(system_info: str) -> list[str]:
    """The AMX features a llama.cpp build reports as compiled in. Example: 'AVX2 = 1 | AMX_INT8 = 1' -> ['AMX_INT8']."""
    return [m.group(1) for m in re.finditer(r"\b(AMX\w*) = 1\b", system_info)]


def system_info() -> str:
    """llama.cpp's own line of compiled-in CPU features (loads the shared library, not a model)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return (info.decode() if isinstance(info, bytes) else str(info)).strip()

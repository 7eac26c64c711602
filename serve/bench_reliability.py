"""`ftatlas bench reliability`: load, a kill -9 mid-upload and a bad-input sweep against a real served child, then
the index checked against a clean ingest; writes reports/reliability.json and returns the table and the verdict."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .bench_server import ServedChild
from .reliability import Tally, aims, consistency, rss_growth_pct, table
from .reliability_load import TIMEOUT_S, Load, crash_mid_upload, listed_uploads, note, side_ingest
from .reliability_sweep import sweep

CLASSES = ("chat", "retrieve", "upload", "reupload", "delete", "ingest", "restart", "bad_input")
COPIED = shutil.ignore_patterns("index.lock", "uploads", "models", "finetune", "*.tmp", "*.old")


def index_ids(settings) -> tuple[list[str], list[str]]:
    """(Chroma's chunk ids, BM25's chunk ids) of a data folder nobody is writing to."""
    from ingest.store import open_collection

    chroma = open_collection(settings).get(include=[])["ids"]
    try:
        bm25 = json.loads((settings.data_dir / "bm25" / "meta.json").read_text(encoding="utf-8"))["ids"]
    except (OSError, ValueError, KeyError) as e:
        bm25 = [f"<unreadable meta.json: {e}>"]
    return chroma, bm25


def with_data_dir(settings, data_dir: Path):
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"data_dir": data_dir})})


def check_index(run, pristine, embedder) -> dict:
    """The run's index vs a clean ingest of the files it remembers into a pristine copy; then its uploads cleaned up
    (the same delete the API runs) and checked again: BM25 = Chroma, and only the uploads' chunks are gone."""
    from ingest import delete_document, ingest, list_documents
    from ingest.state import load_state
    from ingest.store import open_collection

    paths = [Path(p) for p in load_state(run).user_paths]
    summary = ingest(pristine, paths, embedder=embedder, progress=False)
    before = consistency(*index_ids(run), index_ids(pristine)[0])
    uploaded = [k for k, d in list_documents(run).items() if d.get("path", "").startswith("uploads/")]
    for doc_id in uploaded:
        delete_document(run, doc_id)
    shutil.rmtree(run.data_dir / "uploads", ignore_errors=True)
    ref = open_collection(pristine).get(include=["metadatas"])
    upload_dir = str(run.data_dir / "uploads") + "/"
    kept = [i for i, m in zip(ref["ids"], ref["metadatas"]) if not str(m.get("path", "")).startswith(upload_dir)]
    after = consistency(*index_ids(run), kept)
    why = [f"{when}: {k} {v[:3]}{' ...' if len(v) > 3 else ''}" for when, c in (("before clean-up", before),
           ("after clean-up", after)) for k, v in c.items() if isinstance(v, list) and v]
    why += [f"the clean ingest failed on {name}: {reason}" for name, reason in summary.failed]

    def counts(c: dict) -> dict:
        return {k: len(v) if isinstance(v, list) else v for k, v in c.items()}

    return {"ok": before["ok"] and after["ok"] and not summary.failed, "why": why, "uploads_cleaned": len(uploaded),
            "before_cleanup": counts(before), "after_cleanup": counts(after)}


def sample_rss(server: ServedChild, samples: list, until: float, every_s: float = 2.0) -> None:
    """[seconds into the load, MiB] every few seconds until `until` (time.monotonic())."""
    t0 = time.monotonic()
    while time.monotonic() < until:
        try:
            samples.append([round(time.monotonic() - t0, 1), server.rss_mb()])
        except Exception:  # the server died: the load's failures say so
            return
        time.sleep(every_s)


def rss_summary(samples: list[list[float]], warm_s: float) -> dict:
    """Warm = the first sample `warm_s` into the load; end = the last sample.

    Example: ([[0, 900], [10, 1000], [30, 1050]], 10) -> warm 1000, end 1050, growth 5.0%.
    """
    warm = next((mb for t, mb in samples if t >= warm_s), samples[-1][1])
    end = samples[-1][1]
    return {"warm_mb": warm, "end_mb": end, "growth_pct": rss_growth_pct(warm, end), "peak_mb": max(mb for _, mb in samples),
            "samples": samples}


def run_reliability(settings, clients: int = 8, seconds: float = 300.0, out: Path | None = None, embedder=None,
                    echo=print, short: bool = False) -> tuple[str, bool]:
    """The whole bench against children serving a temporary copy of settings' index -> (the table, all aims met)."""
    from ingest import ingest
    from ingest.embedder import Embedder
    from ingest.status import index_status

    t_start = time.perf_counter()
    loaded = [embedder]

    def emb():
        if loaded[0] is None:
            ing = settings.ingest
            loaded[0] = Embedder(ing.embed_model, ing.device, ing.embed_batch_size)
        return loaded[0]

    if index_status(settings)["stale"]:
        echo(f"ingesting {settings.data_dir} first")
        ingest(settings, embedder=emb(), progress=False)
    prep_s = round(time.perf_counter() - t_start, 1)
    tallies = {k: Tally(k) for k in CLASSES}
    headers = {"Authorization": f"Bearer {settings.serve.api_keys[0]}"} if settings.serve.api_keys else {}
    report: dict = {"clients": clients, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="ftatlas-reliability-") as tmp:
        tmp = Path(tmp)
        for name in ("run", "pristine"):
            shutil.copytree(settings.data_dir, tmp / name, ignore=COPIED)
        run, pristine = with_data_dir(settings, tmp / "run"), with_data_dir(settings, tmp / "pristine")
        folder = tmp / "user-folder"
        folder.mkdir()
        (folder / "steady.md").write_bytes(note("folder-steady", 1))
        server, rss, lost, phases = None, {}, [], report.setdefault("phases_s", {"prepare": prep_s})
        try:
            t0 = time.perf_counter()
            server = ServedChild(run, run.data_dir, tmp / "server.log").start()
            report["start_s"] = round(time.perf_counter() - t0, 1)
            echo(f"server up in {report['start_s']} s at {server.url}")
            load = Load(server.url, headers, tallies)
            phases["start"] = round(time.perf_counter() - t0, 1)
            echo(f"load: {clients} clients for {seconds:g} s, an ingest of a user folder beside them")
            t0 = time.perf_counter()
            until = time.monotonic() + seconds
            beside = threading.Thread(target=side_ingest, args=(run, run.data_dir, folder, until, tallies["ingest"],
                                                                 tmp / "ingest.log"), daemon=True)
            beside.start()
            samples: list[list[float]] = []
            sampler = threading.Thread(target=sample_rss, args=(server, samples, until), daemon=True)
            sampler.start()
            load.run(clients, seconds)
            beside.join(TIMEOUT_S["ingest"] + 10)
            sampler.join()
            samples.append([round(time.perf_counter() - t0, 1), server.rss_mb()])
            phases["load_and_drain"] = round(time.perf_counter() - t0, 1)
            # warm-up: the first third of the load, and at least until a chat, an upload and a re-upload answered
            warm_s = max([seconds / 3] + [t - (until - seconds) for t in load.first_ok.values()])
            rss = {**rss_summary(samples, warm_s), "warm_at_s": round(warm_s, 1)}
            lost = load.lost(listed_uploads(server.url, headers))
            echo("kill -9 in the middle of an upload, then a restart")
            t_crash = time.perf_counter()
            report["crash"] = crash_mid_upload(server, headers)
            t0 = time.perf_counter()
            server = ServedChild(run, run.data_dir, tmp / "server.log").start()
            report["restart_s"] = round(time.perf_counter() - t0, 1)
            tallies["restart"].record(200, {200}, report["restart_s"] * 1000)
            report["crash"]["after_restart"] = "listed" if report["crash"]["name"] in listed_uploads(server.url, headers) else "absent"
            phases["crash_and_restart"] = round(time.perf_counter() - t_crash, 1)
            echo("bad-input sweep")
            t0 = time.perf_counter()
            with httpx.Client(base_url=server.url, headers=headers, timeout=90) as c:
                report["sweep"] = sweep(c, settings.serve.max_upload_mb, tallies["bad_input"], generate=not short)
            server.stop()
            phases["sweep"] = round(time.perf_counter() - t0, 1)
        except Exception as e:  # a bench that cannot finish still writes what it saw, and fails
            tallies["restart"].fail("bench_error", f"{type(e).__name__}: {e}")
            report["error"] = f"{type(e).__name__}: {e}"
        finally:
            if server is not None:
                server.kill()
        echo("checking the index against a clean ingest")
        t0 = time.perf_counter()
        documents = check_index(run, pristine, emb()) if "error" not in report else {"ok": False, "why": [report["error"]]}
        phases["index_check"] = round(time.perf_counter() - t0, 1)
        documents["why"] = lost + documents["why"]
        documents["ok"] = documents["ok"] and not lost
        report["server_log_tail"] = server.tail(20) if server is not None else ""
    report.update({"rss": rss, "documents": documents, "classes": {k: t.row() for k, t in tallies.items()}})
    report["aims"] = aims(tallies, documents, rss)
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    ok = all(a["pass"] for a in report["aims"].values())
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    head = (f"reliability: {clients} clients x {seconds:g} s, server start {report.get('start_s')} s, restart "
            f"{report.get('restart_s')} s, kill -9 while {report.get('crash', {}).get('killed_while')} -> "
            f"{report.get('crash', {}).get('after_restart')}, total {report['total_s']} s\nphases (s): {report['phases_s']}; "
            f"RSS samples (s, MiB): {rss.get('samples', [])[::5]}")
    return head + "\n" + table(report) + (f"\nwritten: {out}" if out else ""), ok

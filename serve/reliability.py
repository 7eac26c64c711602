"""What `ftatlas bench reliability` judges: request outcomes per class, index consistency, the aims and the table."""

from __future__ import annotations

import statistics
import threading
from collections import Counter
from dataclasses import dataclass, field

RSS_GROWTH_LIMIT_PCT = 10.0


def verdict(status: int | None, expected: set[int]) -> str:
    """How one answer counts. None = no answer within the class's timeout (a hung request).

    Example: (200, {200}) -> 'ok'; (429, {200, 429}) -> 'ok'; (502, {200}) -> '5xx'; (404, {200}) -> 'unexpected';
    (None, {200}) -> 'hung'; (503, {200, 503}) -> 'ok' (a deliberate 503 is expected by its class).
    """
    if status is None:
        return "hung"
    if status in expected:
        return "ok"
    return "5xx" if status >= 500 else "unexpected"


@dataclass
class Tally:
    """Outcomes of one request class, shared by the client threads."""

    name: str
    statuses: Counter = field(default_factory=Counter)
    verdicts: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, status: int | None, expected: set[int], ms: float, detail: str = "") -> str:
        v = verdict(status, expected)
        with self._lock:
            self.statuses[str(status)] += 1
            self.verdicts[v] += 1
            self.latencies_ms.append(ms)
            if v != "ok" and len(self.problems) < 5:
                self.problems.append(f"{status}: {detail[:200]}")
        return v

    def fail(self, kind: str, detail: str) -> None:
        """A failure that is no HTTP status: an error event inside a 200 stream, a lost document, a dead process."""
        with self._lock:
            self.verdicts[kind] += 1
            if len(self.problems) < 5:
                self.problems.append(f"{kind}: {detail[:200]}")

    def cut(self) -> None:
        """A request still waiting when the load phase ended, closed by the bench (a client that goes away): it
        neither passes nor fails, and the server must take the disconnect in its stride."""
        with self._lock:
            self.verdicts["cut_at_end"] += 1

    def row(self) -> dict:
        lat = sorted(self.latencies_ms)
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
        return {"requests": sum(self.statuses.values()), "statuses": dict(self.statuses), "verdicts": dict(self.verdicts),
                "p50_ms": round(statistics.median(lat), 1) if lat else 0.0, "p95_ms": round(p95, 1),
                "problems": self.problems}


def consistency(chroma_ids: list[str], bm25_ids: list[str], reference_ids: list[str]) -> dict:
    """Is the index whole? Chroma must equal BM25 and a clean ingest of the same files, with no id twice.

    Example: (['a', 'b'], ['a', 'b', 'b'], ['a', 'b', 'c']) -> ok False, duplicated ['b'], missing ['c'].
    """
    dup = sorted({i for ids in (chroma_ids, bm25_ids) for i, n in Counter(ids).items() if n > 1})
    chroma, bm25, ref = set(chroma_ids), set(bm25_ids), set(reference_ids)
    out = {"chunks": len(chroma), "reference_chunks": len(ref), "duplicated": dup,
           "missing": sorted(ref - chroma), "extra": sorted(chroma - ref),
           "bm25_only": sorted(bm25 - chroma), "chroma_only": sorted(chroma - bm25)}
    out["ok"] = not any(out[k] for k in ("duplicated", "missing", "extra", "bm25_only", "chroma_only"))
    return out


def rss_growth_pct(warm_mb: float, end_mb: float) -> float:
    """Example: (1000, 1080) -> 8.0."""
    return round(100.0 * (end_mb - warm_mb) / warm_mb, 1) if warm_mb else 0.0


def aims(tallies: dict[str, Tally], documents: dict, rss: dict) -> dict[str, dict]:
    """The four aims of issue 11 plus the bad-input sweep, each {'pass': bool, 'detail': str}."""
    total = Counter()
    for t in tallies.values():
        total.update(t.verdicts)
    sweep = tallies.get("bad_input")
    bad = sum(n for v, n in sweep.verdicts.items() if v != "ok") if sweep else 0  # a "cut" is a load-phase verdict
    growth = rss.get("growth_pct")
    return {
        "no 5xx (but a deliberate 503)": {"pass": total["5xx"] + total["stream_error"] == 0,
                                          "detail": f"{total['5xx']} 5xx, {total['stream_error']} errors inside streams"},
        "no hung request": {"pass": total["hung"] == 0, "detail": f"{total['hung']} past their class's timeout"},
        "no document lost or duplicated": {"pass": bool(documents.get("ok")),
                                           "detail": "; ".join(documents.get("why") or []) or "index = clean ingest, BM25 = Chroma"},
        f"RSS growth < {RSS_GROWTH_LIMIT_PCT:g}%": {"pass": growth is not None and growth < RSS_GROWTH_LIMIT_PCT,
                                                    "detail": f"{rss.get('warm_mb')} -> {rss.get('end_mb')} MiB ({growth}%)"},
        "bad input gets a 4xx": {"pass": sweep is not None and bad == 0 and sweep.row()["requests"] > 0,
                                 "detail": f"{bad} of {sweep.row()['requests'] if sweep else 0} cases answered otherwise"},
    }


def table(report: dict) -> str:
    """The printed summary: one line per request class, then one per aim."""
    lines = [f"{'class':<12} {'requests':>8} {'ok':>6} {'p50 ms':>9} {'p95 ms':>9}  statuses / failures"]
    for name, r in report["classes"].items():
        failures = {k: v for k, v in r["verdicts"].items() if k not in ("ok", "cut_at_end")}
        lines.append(f"{name:<12} {r['requests']:>8} {r['verdicts'].get('ok', 0):>6} {r['p50_ms']:>9} {r['p95_ms']:>9}  "
                     f"{r['statuses']}{'  FAILED ' + str(failures) if failures else ''}"
                     f"{'  (%d cut at the end)' % r['verdicts']['cut_at_end'] if r['verdicts'].get('cut_at_end') else ''}")
    lines.append("")
    for name, a in report["aims"].items():
        lines.append(f"{'PASS' if a['pass'] else 'FAIL'}  {name}: {a['detail']}")
    return "\n".join(lines)

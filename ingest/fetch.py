"""`ftatlas corpus fetch`: download the method papers' PDFs into the cache, with a timeout on every call."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import FetchError
from .sources import pdf_cache, read_manifest


@dataclass
class FetchReport:
    downloaded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"papers: {len(self.downloaded)} downloaded, {len(self.cached)} already cached, {len(self.failed)} failed"]
        lines += [f"  failed: {doc_id}: {why}" for doc_id, why in self.failed]
        if self.downloaded:
            lines.append("run `ftatlas ingest` to add them to the index")
        return "\n".join(lines)


def fetch_papers(settings, client=None) -> FetchReport:
    """Download each manifest entry's pdf_url once. Raises FetchError at once when the network is unreachable."""
    import httpx

    report = FetchReport()
    folder = pdf_cache(settings)
    todo = [d for d in read_manifest(settings) if d.get("pdf_url")]
    timeout = httpx.Timeout(settings.ingest.fetch_timeout_s, connect=min(5.0, settings.ingest.fetch_timeout_s))
    own = client is None
    client = client or httpx.Client(timeout=timeout, follow_redirects=True, headers={"User-Agent": "ftatlas/0.1"})
    try:
        for n, d in enumerate(todo):
            target = folder / f"{d['id']}.pdf"
            if target.is_file():
                report.cached.append(d["id"])
                continue
            try:
                resp = client.get(d["pdf_url"])
                resp.raise_for_status()
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if not report.downloaded:  # nothing reachable: stop now, having changed nothing
                    raise FetchError(f"cannot reach {httpx.URL(d['pdf_url']).host} (offline?): {e}") from e
                report.failed.append((d["id"], f"connection failed: {e}"))
                continue
            except httpx.HTTPError as e:
                report.failed.append((d["id"], str(e) or type(e).__name__))
                continue
            if not resp.content.startswith(b"%PDF"):
                report.failed.append((d["id"], f"not a PDF ({resp.headers.get('content-type', '?')})"))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            tmp.write_bytes(resp.content)
            tmp.replace(target)
            report.downloaded.append(d["id"])
    finally:
        if own:
            client.close()
    return report

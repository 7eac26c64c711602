"""Documents -> repaired text -> chunks -> embeddings -> Chroma + BM25. The public surface of the ingest room."""

from .errors import DocumentError, FetchError, IngestError
from .fetch import fetch_papers
from .pipeline import Summary, delete_document, ingest


def list_documents(settings) -> dict[str, dict]:
    """key -> {doc_id, kind, chunks, title, ...}, read from the collection itself."""
    from .pipeline import documents_from_store
    from .store import Store, open_collection

    return documents_from_store(Store(open_collection(settings)))


__all__ = ["DocumentError", "FetchError", "IngestError", "Summary", "delete_document", "fetch_papers", "ingest", "list_documents"]

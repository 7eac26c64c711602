"""Documents -> repaired text -> chunks -> embeddings -> Chroma + BM25. The public surface of the ingest room."""

from .errors import DocumentError, FetchError, IndexBusy, IngestError, UploadError, UploadTooLarge
from .fetch import fetch_papers
from .pipeline import Summary, delete_document, ingest
from .sources import shown_path
from .uploads import add_upload


def list_documents(settings) -> dict[str, dict]:
    """key -> {doc_id, kind, chunks, title, path, ...}, read from the collection itself; paths as shown_path gives them."""
    from .pipeline import documents_from_store
    from .store import Store, open_collection

    docs = documents_from_store(Store(open_collection(settings)))
    return {k: {**d, "path": shown_path(settings, d.get("path", ""))} for k, d in docs.items()}


__all__ = ["DocumentError", "FetchError", "IndexBusy", "IngestError", "Summary", "UploadError", "UploadTooLarge", "add_upload",
           "delete_document", "fetch_papers", "ingest", "list_documents"]

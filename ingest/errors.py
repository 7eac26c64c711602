"""Domain errors of the ingestion room; the CLI and the API turn them into messages."""


class IngestError(Exception):
    """Ingestion cannot go on (bad settings, unreachable Chroma server, unknown document)."""


class DocumentError(IngestError):
    """One document cannot be read; it is skipped and named in the summary."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class FetchError(IngestError):
    """Downloading the papers' PDFs failed (offline, timeout, bad response)."""


class IndexBusy(IngestError):
    """Another ingest or delete held the index lock past ingest.lock_timeout_s; trying again later can succeed."""


class UploadError(IngestError):
    """An uploaded file cannot be taken: a name that is no file name, an unsupported type, or bad content."""


class UploadTooLarge(UploadError):
    """An uploaded file is over serve.max_upload_mb."""

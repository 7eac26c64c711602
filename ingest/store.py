"""Chroma, local (PersistentClient) or shared (HttpClient), written through LlamaIndex's ChromaVectorStore."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from .errors import IngestError

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@dataclass
class StoredChunk:
    id: str
    text: str
    embedding: np.ndarray
    metadata: dict


def open_collection(settings):
    """The configured Chroma collection. Never given an embedding function: we always pass vectors."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    opts = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    ing = settings.ingest
    try:
        if ing.chroma_host:
            client = chromadb.HttpClient(host=ing.chroma_host, port=ing.chroma_port, settings=opts)
            client.heartbeat()
        else:
            path = settings.data_dir / "chroma"
            path.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(path), settings=opts)
        return client.get_or_create_collection(ing.collection, embedding_function=None, metadata={"hnsw:space": "cosine"})
    except IngestError:
        raise
    except Exception as e:  # chromadb raises ValueError, ConnectionError, httpx errors... for an unreachable server
        where = f"{ing.chroma_host}:{ing.chroma_port}" if ing.chroma_host else str(settings.data_dir / "chroma")
        raise IngestError(f"cannot open Chroma at {where}: {e}") from e


def reopen_collection(settings):
    """The collection through a new local client. Chroma's PersistentClient keeps one view of the files per process;
    after another process wrote (a `ftatlas ingest` beside the server) reads of documents and embeddings fail with
    'Error finding id' until that view is dropped. Call under index_lock: other handles in this process die too."""
    if not settings.ingest.chroma_host:
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    return open_collection(settings)


class Store:
    """The chunk collection: add through LlamaIndex, read and delete by metadata."""

    def __init__(self, collection):
        from llama_index.vector_stores.chroma import ChromaVectorStore

        self.collection = collection
        self.vector_store = ChromaVectorStore(chroma_collection=collection)

    def add(self, chunks: list[StoredChunk]) -> None:
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        nodes = []
        for c in chunks:
            node = TextNode(id_=c.id, text=c.text, metadata=c.metadata, embedding=c.embedding.tolist())
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=c.metadata["doc_id"])
            nodes.append(node)
        if nodes:
            self.vector_store.add(nodes)

    def metadatas(self, where: dict | None = None) -> dict[str, dict]:
        """id -> metadata for every chunk (or those matching `where`)."""
        got = self.collection.get(where=where, include=["metadatas"])
        return dict(zip(got["ids"], got["metadatas"]))

    def delete_ids(self, ids: list[str]) -> None:
        for i in range(0, len(ids), 500):
            self.collection.delete(ids=ids[i : i + 500])

    def all_texts(self) -> tuple[list[str], list[str], list[dict]]:
        got = self.collection.get(include=["documents", "metadatas"])
        order = sorted(range(len(got["ids"])), key=lambda i: got["ids"][i])
        return ([got["ids"][i] for i in order], [got["documents"][i] for i in order], [got["metadatas"][i] for i in order])

    def fingerprint(self) -> str:
        """Hash of the sorted chunk ids; ids embed each document's content fingerprint, so this tracks content."""
        ids = sorted(self.collection.get(include=[])["ids"])
        return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]

    def count(self) -> int:
        return self.collection.count()

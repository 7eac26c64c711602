"""The baseline row: LlamaIndex's stock pipeline (SimpleDirectoryReader + in-memory VectorStoreIndex) over the corpus."""

from __future__ import annotations

from pathlib import Path

from .gold import corpus_files


class StockRetriever:
    """Default reader, default splitter, the bundled embedder, no LLM: what our retrieval is measured against."""

    def __init__(self, settings, show_progress: bool = False):
        from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        from ingest.embedder import bundled_model_dir

        Settings.llm = None  # retrieval only: stops LlamaIndex from reaching for its default OpenAI LLM
        files = corpus_files(settings)
        self.doc_ids = {str(path.resolve()): doc_id for doc_id, path in files.items()}
        docs = SimpleDirectoryReader(input_files=[str(p) for p in files.values()]).load_data()
        embed = HuggingFaceEmbedding(model_name=str(bundled_model_dir()), device=settings.ingest.device)
        self.index = VectorStoreIndex.from_documents(docs, embed_model=embed, show_progress=show_progress)
        self.complete = None  # set by answer_through() when an in-process engine can answer from these passages

    def retrieve(self, query: str, top_k: int, retrieval: dict | None = None) -> list[dict]:
        """Top-k nodes in the sources shape, doc_id recovered from the file each node came from."""
        nodes = self.index.as_retriever(similarity_top_k=top_k).retrieve(query)
        out = []
        for i, n in enumerate(nodes, 1):
            path = str(Path(n.node.metadata.get("file_path", "")).resolve())
            out.append({"index": i, "doc_id": self.doc_ids.get(path, ""), "title": n.node.metadata.get("file_name", ""),
                        "section": "", "source": path, "text": n.node.get_content(), "score": float(n.score or 0.0)})
        return out

    def answer_through(self, rag) -> None:
        """Answer with the same LLM and prompt as `rag` (a RagEngine), given this pipeline's passages instead of ours."""
        from serve.rag import RagEngine

        from .backends import streamed

        self.complete = streamed(RagEngine(rag.settings, engine=rag.engine(), retriever=StockPassages(self, rag.retriever)))


class StockPassages:
    """Stands in for serve's Retriever inside a RagEngine: the stock pipeline's passages, our embedder and search query."""

    def __init__(self, stock: StockRetriever, retriever):
        self.stock = stock
        self.embedder = retriever.embedder
        self.search_query = retriever.search_query  # the grounder weighs sentences exactly as for atlas-rag
        self.glossary = retriever.glossary  # and checks Russian answers against English passages the same way

    def retrieve(self, query: str, opts=None) -> list:
        from serve.retrieval import Passage

        top_k = opts.top_k if opts is not None else 5
        return [Passage(f"stock-{s['doc_id']}-{s['index']}", s["doc_id"], s["title"], s["section"], s["source"], s["text"],
                        s["score"]) for s in self.stock.retrieve(query, top_k)]

    def chunk_count(self) -> int:
        return len(self.stock.index.docstore.docs)

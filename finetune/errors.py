"""The fine-tuning room's domain errors; the CLI turns them into one-line messages."""


class FinetuneError(Exception):
    """Training data, a base model or a run cannot be built as asked."""


from serve.errors import AdapterError  # noqa: E402,F401  (checked where serving can reach it: serve/adapter.py)

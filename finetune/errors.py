"""The fine-tuning room's domain errors; the CLI turns them into one-line messages."""


class FinetuneError(Exception):
    """Training data, a base model or a run cannot be built as asked."""


class AdapterError(FinetuneError):
    """A LoRA adapter folder is missing, malformed, or does not fit the base model it is paired with."""

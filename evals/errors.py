"""Domain errors of the evals room; the CLI turns them into one-line messages."""


class EvalError(Exception):
    """A gold set, thresholds file, endpoint or configuration problem that stops an eval."""

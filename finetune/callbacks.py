"""Trainer callbacks: a wall-clock budget that stops training cleanly, and a per-step timer."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class TimeBudget(TrainerCallback):
    """Stops training after `minutes` and asks for a checkpoint, so the adapter is still saved and the run resumable."""

    def __init__(self, minutes: float | None):
        self.limit_s = minutes * 60 if minutes else None
        self.started = time.monotonic()
        self.stopped = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.limit_s is not None and time.monotonic() - self.started >= self.limit_s:
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"  # the Trainer only does this itself at max_steps
            self.stopped = True
        return control


class StepTimer(TrainerCallback):
    """Seconds per optimizer step, evaluation and checkpointing excluded."""

    def __init__(self):
        self.durations: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.monotonic() - self._t)

    @property
    def s_per_step(self) -> float:
        # The first step pays for warm-up (allocations, lazy init); leave it out when there are others.
        d = self.durations[1:] or self.durations
        return sum(d) / len(d) if d else 0.0

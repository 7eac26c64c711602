"""Answer-only logits: the LM head runs only where the loss reads (the answer), not over the whole prompt.

The loss covers the assistant's answer alone, yet a plain forward pass projects every prompt position onto the
vocabulary: for Gemma 3's 262k-word output layer that is most of a step's compute. The model's own `logits_to_keep`
slices the hidden states before the head; this trainer passes it the positions whose next token is an answer token.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

IGNORE = -100


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions (shared by the batch) whose logits predict an answer token: one before each labelled token.

    Example: labels [[-100, -100, 7, 8], [-100, 5, -100, -100]] -> tensor([0, 1, 2]).
    """
    wanted = (labels[:, 1:] != IGNORE).any(dim=0)
    return wanted.nonzero().flatten()


def answer_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits at the answer positions, their targets): the same cross-entropy the full forward gives.

    The loss is summed over answer tokens and divided by `num_items_in_batch` when the Trainer counts them over
    gradient accumulation (as the models' own loss does), else averaged over this batch.
    """
    labels = inputs["labels"]
    keep = answer_positions(labels)
    if keep.numel() == 0:  # no answer token in the batch (cut by max_length): one position, its target ignored
        keep = torch.zeros(1, dtype=torch.long, device=labels.device)
    fwd = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask", "assistant_masks")}
    logits = model(**fwd, use_cache=False, logits_to_keep=keep).logits  # [batch, len(keep), vocab]
    targets = labels[:, keep + 1]  # the token each kept position predicts
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                             reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1), logits, targets


class AnswerOnlyTrainer(SFTTrainer):
    """TRL's SFTTrainer whose loss projects only the answer positions onto the vocabulary."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, logits, targets = answer_loss(model, inputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        mask = targets != IGNORE
        if mask.any() and hasattr(self, "_metrics"):
            with torch.no_grad():  # TRL's own metric, computed on the logits that exist
                right = (logits.argmax(-1) == targets) & mask
                self._metrics[mode]["mean_token_accuracy"].append((right.sum() / mask.sum()).item())
        return (loss, {"logits": logits}) if return_outputs else loss

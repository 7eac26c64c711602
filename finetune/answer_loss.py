"""Answer-only logits: the LM head runs only where the loss reads (the answer tokens), not over the whole prompt.

The loss covers the assistant's answer alone, yet the vocabulary projection is the costliest layer of a small model
(Gemma 3's 262k-word head is ~63% of its compute). TRL's fused LM head keeps only the labelled positions on GPUs with
Triton; on a CPU it projects every position. This trainer slices the hidden states to the answer positions first.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

IGNORE = -100


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """Which positions' logits predict an answer token (the next label is not ignored).

    Example: labels [[-100, -100, 7, 8]] -> [[False, True, True]] (positions 1 and 2 predict 7 and 8).
    """
    return labels[:, 1:] != IGNORE


def answer_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits at the answer positions [n, vocab], their targets [n]): the cross-entropy of the full forward.

    Summed over answer tokens and divided by `num_items_in_batch` when the Trainer counts them across gradient
    accumulation (as the models' own loss does), else averaged over this batch's answer tokens.
    """
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft injects LoRA in place
    labels = inputs["labels"]
    mask = answer_mask(labels)
    fwd = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    hidden = causal.base_model(**fwd, use_cache=False).last_hidden_state[:, :-1]
    logits = causal.get_output_embeddings()(hidden[mask])
    cap = getattr(causal.config.get_text_config(), "final_logit_softcapping", None)
    if cap:  # Gemma 2 caps its logits; the model's own forward does this after the head
        logits = torch.tanh(logits / cap) * cap
    targets = labels[:, 1:][mask]
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1), logits, targets


class AnswerOnlyTrainer(SFTTrainer):
    """TRL's SFTTrainer whose loss projects only the answer positions onto the vocabulary."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, logits, targets = answer_loss(model, inputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        if targets.numel():
            with torch.no_grad():  # TRL's own metric, on the logits that exist
                accuracy = (logits.argmax(-1) == targets).float().mean().item()
            self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        return (loss, {"logits": logits}) if return_outputs else loss

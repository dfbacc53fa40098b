"""The DPO loss by hand (what TRL's `DPOTrainer` computes with loss_type="sigmoid").

For a prompt x with a chosen answer y_w and a rejected one y_l, each model gives a sequence
log-probability log π(y | x). The implicit reward of an answer is how much more likely the
policy makes it than the frozen reference does, times β:

    r(y) = β · (log π(y | x) − log π_ref(y | x))
    loss = −log σ( r(y_w) − r(y_l) )

At the start the policy is the reference: both rewards are 0 and the loss is log 2. The
gradient raises the chosen answer's log-probability and lowers the rejected one's, more when
the policy still ranks them wrongly (σ of a negative margin is near 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, chosen rewards and rejected rewards; every input (N,) log-probs."""
    # LAB:dpo-loss begin
    # HINT: rewards are beta * (policy log-prob - reference log-prob), for chosen and rejected.
    # HINT: the loss is -log sigmoid(chosen reward - rejected reward); use F.logsigmoid
    # HINT: (stable for large margins) and keep the reference out of the gradient (detach).
    chosen = beta * (policy_chosen - ref_chosen.detach())
    rejected = beta * (policy_rejected - ref_rejected.detach())
    losses = -F.logsigmoid(chosen - rejected)
    return losses, chosen.detach(), rejected.detach()
    # LAB:dpo-loss end

"""Memory anatomy of training: what the weights, gradients, Adam state and EMA copy cost.

Sizes are in MB of 2**20 bytes, as the seed blog posts count them: 117M fp32 parameters are about
447 MB of weights; AdamW keeps two fp32 moments per trainable parameter (about 894 MB), the
gradients one more copy of the trainable weights, the EMA one more copy of all weights.
"""

from __future__ import annotations

import torch
from torch import nn

MB = 2**20


def memory_anatomy(model: nn.Module, use_ema: bool = True, adam_state_dtype: torch.dtype = torch.float32) -> dict:
    """Predicted sizes for training `model` with AdamW (and EMA), from its parameters alone."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    n_total = sum(p.numel() for p in params)
    n_train = sum(p.numel() for p in trainable)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    adam_bytes = 2 * n_train * torch.tensor([], dtype=adam_state_dtype).element_size()
    ema_bytes = sum(p.numel() * p.element_size() for p in trainable) if use_ema else 0
    out = {
        "parameters": n_total,
        "trainable_parameters": n_train,
        "weights_mb": weight_bytes / MB,
        "gradients_mb": grad_bytes / MB,
        "adam_state_mb": adam_bytes / MB,
        "ema_mb": ema_bytes / MB,
    }
    out["total_mb"] = out["weights_mb"] + out["gradients_mb"] + out["adam_state_mb"] + out["ema_mb"]
    return out


def measured_adam_state_mb(optimizer: torch.optim.Optimizer) -> float:
    """Bytes the optimizer really holds in its moment buffers (after at least one step)."""
    total = 0
    for state in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                total += state[key].numel() * state[key].element_size()
    return total / MB

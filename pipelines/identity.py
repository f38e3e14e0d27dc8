"""The identity of a diffusers model: what caches keyed by "which model made this" compare."""

from __future__ import annotations

import hashlib
import json

import torch


def module_identity(module: torch.nn.Module) -> str:
    """A hash of a diffusers model's class, config and weights (equal across save/load)."""
    h = hashlib.sha256(type(module).__name__.encode())
    config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=list).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]

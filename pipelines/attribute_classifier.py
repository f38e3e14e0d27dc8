"""The attribute classifier: a small CNN that reads all 18 cartoon attributes from an image.

It judges generated cartoons (tasks/cartoon/evaluate.py): an image is right when the classifier
reads back the attributes it was asked for. Saved with `save_pretrained`; load it with
`AttributeClassifier.from_pretrained(dir)`. Inference only here; training is tasks/cartoon/classifier.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class AttributeClassifier(ModelMixin, ConfigMixin):
    """(B, 3, r, r) images in [-1, 1] -> (B, width) logits, one softmax group per attribute."""

    @register_to_config
    def __init__(
        self,
        attribute_names: Sequence[str] = (),
        attribute_counts: Sequence[int] = (),
        resolution: int = 32,
        channels: Sequence[int] = (32, 64, 128),
        hidden_dim: int = 256,
    ):
        super().__init__()
        layers, c_in, size = [], 3, resolution
        for c in channels:  # conv-BN-ReLU twice, then halve the resolution
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in, size = c, size // 2
        self.features = nn.Sequential(*layers)
        # Flatten, not average-pool: where a colour sits (hair vs face) is the information.
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(c_in * size * size, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, int(sum(attribute_counts))),
        )

    @property
    def offsets(self) -> list[int]:
        return [0] + list(np.cumsum(self.config.attribute_counts)[:-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.features(images))

    def split_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(logits, list(self.config.attribute_counts), dim=1))

    def loss(self, logits: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.cross_entropy(l, attrs[:, j]) for j, l in enumerate(self.split_logits(logits))]).mean()

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 18) predicted variant indices."""
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            logits = self(images[i : i + batch_size].to(self.device, self.dtype))
            out.append(torch.stack([l.argmax(1) for l in self.split_logits(logits)], dim=1).cpu())
        self.train(was)
        return torch.cat(out)

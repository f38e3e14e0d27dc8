"""Stage train_attribute_classifier: a small CNN that predicts all 18 cartoon attributes.

It is the judge of evaluate_cartoon: generated images are scored by whether the classifier reads
back the attributes they were asked for. Its validation accuracy on real images is the ceiling of
that score, reported per attribute.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn
from tqdm.auto import tqdm

from tasks.cartoon.loader import cartoon_loader, load_schema
from tasks.common.log import get_logger
from tasks.common.shards import write_json_atomic


class AttributeClassifier(ModelMixin, ConfigMixin):
    """(B, 3, r, r) images in [-1, 1] -> (B, width) logits, one softmax group per attribute."""

    @register_to_config
    def __init__(self, attribute_names: Sequence[str] = (), attribute_counts: Sequence[int] = (),
                 resolution: int = 32, channels: Sequence[int] = (32, 64, 128), hidden_dim: int = 256):
        super().__init__()
        layers, c_in, size = [], 3, resolution
        for c in channels:  # conv-BN-ReLU twice, then halve the resolution
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in, size = c, size // 2
        self.features = nn.Sequential(*layers)
        # Flatten, not average-pool: where a colour sits (hair vs face) is the information.
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in * size * size, hidden_dim),
                                  nn.ReLU(inplace=True), nn.Linear(hidden_dim, int(sum(attribute_counts))))

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
            logits = self(images[i:i + batch_size].to(self.device, self.dtype))
            out.append(torch.stack([l.argmax(1) for l in self.split_logits(logits)], dim=1).cpu())
        self.train(was)
        return torch.cat(out)


def per_attribute_accuracy(pred: torch.Tensor, target: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    if pred.shape != target.shape or pred.shape[1] != len(names):
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} must be (N, {len(names)})")
    acc = (pred == target).float().mean(0)
    return {n: float(a) for n, a in zip(names, acc)}


def load_split(shard_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in memory: images (N, 3, H, W) in [-1, 1] and attribute indices (N, 18)."""
    images, attrs = [], []
    for batch in cartoon_loader(shard_dir, split, batch_size=256, shuffle=False, drop_last=False):
        images.append(batch["image"])
        attrs.append(batch["attrs"])
    if not images:
        raise ValueError(f"{shard_dir} has no {split} samples")
    return torch.cat(images), torch.cat(attrs)


def run_classifier_training(shard_dir: str, model_dir: str, metrics_path: str, *, resolution: int = 32,
                            channels: Sequence[int] = (32, 64, 128), hidden_dim: int = 256, epochs: int = 6,
                            batch_size: int = 64, learning_rate: float = 2e-3, weight_decay: float = 1e-4,
                            seed: int = 0, show_progress: bool = True) -> dict:
    log = get_logger()
    schema = load_schema(shard_dir)
    t0 = time.perf_counter()
    # Resize once up front (the model would do it per batch otherwise).
    def resized(x):
        return F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False) \
            if x.shape[-1] != resolution else x
    train_x, train_y = load_split(shard_dir, "train")
    val_x, val_y = load_split(shard_dir, "val")
    train_x, val_x = resized(train_x), resized(val_x)
    torch.manual_seed(seed)
    model = AttributeClassifier(list(schema.names), list(schema.counts), resolution, list(channels), hidden_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = len(train_x) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc="classifier", unit="step", disable=not show_progress)
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = model.loss(model(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
    bar.close()
    accuracy = per_attribute_accuracy(model.predict(val_x), val_y, schema.names)
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    metrics = {
        "val_accuracy_mean": float(np.mean(list(accuracy.values()))),
        "val_accuracy": accuracy,
        "val_samples": len(val_x),
        "train_samples": len(train_x),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - t0,
    }
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(metrics_path, metrics)
    log.info(f"attribute classifier: mean val accuracy {metrics['val_accuracy_mean']:.3f} "
             f"(hair_color {accuracy.get('hair_color', float('nan')):.3f}, "
             f"face_color {accuracy.get('face_color', float('nan')):.3f})")
    return metrics


@task(cache_policy=NO_CACHE)
def train_attribute_classifier(shard_dir: str, model_dir: str, metrics_path: str, **params) -> str:
    """Train the judge on the real training shards; returns the model folder."""
    run_classifier_training(shard_dir, model_dir, metrics_path, **params)
    return model_dir

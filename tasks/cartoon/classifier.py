"""Stage train_attribute_classifier: a small CNN that predicts all 18 cartoon attributes.

It is the judge of evaluate_cartoon: generated images are scored by whether the classifier reads
back the attributes they were asked for. Its validation accuracy on real images is the ceiling of
that score, reported per attribute.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.attribute_classifier import AttributeClassifier
from tasks.cartoon.config import ClassifierConfig
from tasks.cartoon.loader import cartoon_loader, load_schema
from tasks.reporting.log import get_logger
from tasks.reporting.progress import progress
from tasks.reporting.timings import write_metrics


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


def run_classifier_training(
    shard_dir: str, model_dir: str, metrics_path: str, config: ClassifierConfig, *, show_progress: bool = True
) -> dict:
    log = get_logger()
    resolution, epochs, batch_size, seed = config.resolution, config.epochs, config.batch_size, config.seed
    schema = load_schema(shard_dir)
    t0 = time.perf_counter()

    # Resize once up front (the model would do it per batch otherwise).
    def resized(x):
        return (
            F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
            if x.shape[-1] != resolution
            else x
        )

    train_x, train_y = load_split(shard_dir, "train")
    val_x, val_y = load_split(shard_dir, "val")
    train_x, val_x = resized(train_x), resized(val_x)
    torch.manual_seed(seed)
    model = AttributeClassifier(
        list(schema.names), list(schema.counts), resolution, list(config.channels), config.hidden_dim
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = len(train_x) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(train_x)} training images in {shard_dir} are smaller than one batch "
            f"({batch_size}): use more data or a smaller batch_size"
        )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.learning_rate, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = progress(total=epochs * steps_per_epoch, desc="classifier", unit="step", disable=not show_progress)
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
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
    }
    write_metrics(metrics_path, metrics, {"seconds": time.perf_counter() - t0})
    log.info(
        f"attribute classifier: mean val accuracy {metrics['val_accuracy_mean']:.3f} "
        f"(hair_color {accuracy.get('hair_color', float('nan')):.3f}, "
        f"face_color {accuracy.get('face_color', float('nan')):.3f})"
    )
    return metrics

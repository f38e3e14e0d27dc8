"""Stage evaluate_cartoon: does the model draw the attributes it is asked for, per guidance scale?

Validation attribute sets are sampled at every guidance scale with identical seeds (the same
starting noise for a given image at every scale), and the attribute classifier reads the
attributes back. Accuracy per attribute and its mean, per scale, are the metrics; one grid per
scale and a GIF across scales show the same faces changing with guidance.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from pipelines import CartoonDiffusionPipeline, make_scheduler
from tasks.cartoon.classifier import AttributeClassifier, per_attribute_accuracy
from tasks.cartoon.loader import cartoon_loader
from tasks.cartoon.train import image_grid
from tasks.common.log import get_logger
from tasks.common.shards import write_json_atomic


def scale_key(scale: float) -> str:
    return f"guidance_{scale:g}"


def val_attribute_sets(shard_dir: str, n: int) -> torch.Tensor:
    """The first `n` validation attribute sets in shard order (the same for every run)."""
    out = []
    for batch in cartoon_loader(shard_dir, "val", batch_size=256, shuffle=False, drop_last=False):
        out.append(batch["attrs"])
    attrs = torch.cat(out)
    if len(attrs) < n:
        raise ValueError(f"asked for {n} validation attribute sets, {shard_dir} has {len(attrs)}")
    return attrs[:n]


def generate(pipe: CartoonDiffusionPipeline, attrs: torch.Tensor, scale: float, steps: int, seed: int,
             batch_size: int) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1]; image i starts from the same noise at every scale (seed + i)."""
    images = []
    for start in range(0, len(attrs), batch_size):
        chunk = attrs[start:start + batch_size]
        generators = [torch.Generator(device=pipe.device).manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(chunk, guidance_scale=scale, num_inference_steps=steps, generator=generators, output_type="pt")
        images.append(out.images.cpu() * 2 - 1)
    return torch.cat(images)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def labelled(grid: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (grid.width, grid.height + 14), (255, 255, 255))
    out.paste(grid, (0, 14))
    ImageDraw.Draw(out).text((2, 1), text, fill=(0, 0, 0))
    return out


def run_evaluation(model_dir: str, classifier_dir: str, shard_dir: str, out_dir: str, metrics_path: str, *,
                   guidance_scales: Sequence[float] = (0, 1, 2, 3, 5, 7, 9), num_samples: int = 64,
                   num_inference_steps: int = 20, scheduler: str = "dpm", seed: int = 0, batch_size: int = 64,
                   grid_images: int = 16, show_progress: bool = True) -> dict:
    log = get_logger()
    t0 = time.perf_counter()
    pipe = CartoonDiffusionPipeline.from_pretrained(model_dir)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    classifier = AttributeClassifier.from_pretrained(classifier_dir).eval()
    names = list(pipe.attribute_names)
    if list(classifier.config.attribute_names) != names:
        raise ValueError("the classifier and the diffusion model were trained on different attribute layouts")
    attrs = val_attribute_sets(shard_dir, num_samples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_scale, frames = {}, []
    for scale in tqdm(list(guidance_scales), desc="guidance scales", disable=not show_progress):
        images = generate(pipe, attrs, float(scale), num_inference_steps, seed, batch_size)
        accuracy = per_attribute_accuracy(classifier.predict(images), attrs, names)
        per_scale[scale_key(scale)] = {"accuracy_mean": float(np.mean(list(accuracy.values()))),
                                       "accuracy": accuracy}
        grid = labelled(image_grid(to_pil(images[:grid_images]), cols=int(np.ceil(np.sqrt(grid_images)))),
                        f"guidance {scale:g}")
        grid.save(out / f"grid_{scale_key(scale)}.png")
        frames.append(grid)
        log.info(f"guidance {scale:g}: mean accuracy {per_scale[scale_key(scale)]['accuracy_mean']:.3f}, "
                 f"hair_color {accuracy.get('hair_color', float('nan')):.3f}, "
                 f"face_color {accuracy.get('face_color', float('nan')):.3f}")
    frames[0].save(out / "guidance_scales.gif", save_all=True, append_images=frames[1:], duration=800, loop=0)
    best = max(per_scale, key=lambda k: per_scale[k]["accuracy_mean"])
    metrics = {
        "num_samples": num_samples,
        "scheduler": scheduler,
        "num_inference_steps": num_inference_steps,
        "best_guidance": best,
        "accuracy_mean_by_guidance": {k: v["accuracy_mean"] for k, v in per_scale.items()},
        "by_guidance": per_scale,
        "seconds": time.perf_counter() - t0,
    }
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(metrics_path, metrics)
    return metrics


@task(cache_policy=NO_CACHE)
def evaluate_cartoon(model_dir: str, classifier_dir: str, shard_dir: str, out_dir: str, metrics_path: str,
                     **params) -> str:
    """Sample, judge with the classifier, write grids, GIF and metrics; returns the metrics path."""
    run_evaluation(model_dir, classifier_dir, shard_dir, out_dir, metrics_path, **params)
    return metrics_path

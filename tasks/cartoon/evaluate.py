"""Stage evaluate_cartoon: does the model draw the attributes it is asked for, per guidance scale?

Validation attribute sets are sampled at every guidance scale with identical seeds (the same
starting noise for a given image at every scale), and the attribute classifier (the judge) reads
the attributes back. One grid per scale and a GIF across scales show the same faces changing with
guidance.

What the figures can say is bounded by the judge. Its accuracy on *real* validation images (its
ceiling, from metrics/attribute_classifier.json) is near chance for most of the 18 attributes at
16x16: a generated image's "miss" there is the judge's noise, not the model's. So each attribute is
reported with its chance level (1 / variants) and the judge's ceiling beside it, and the headline
averages only the attributes the judge reads reliably, each normalised by its ceiling:

    reliable   = ceiling >= min_ceiling  and  ceiling >= min_ceiling_over_chance * chance
    headline   = mean over reliable attributes of accuracy / ceiling

1.0 means the model's images are read as well as real ones. `best_guidance` is chosen on it.
The raw per-attribute accuracies and the plain mean over all 18 are kept in the detail file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from prefect import task
from prefect.cache_policies import NO_CACHE

from pipelines import AttributeClassifier, CartoonDiffusionPipeline, make_scheduler
from pipelines.folders import folder_identity
from tasks.cartoon.classifier import per_attribute_accuracy
from tasks.cartoon.loader import cartoon_loader
from tasks.config.samples import SamplerName
from tasks.config.typed import StageConfig
from tasks.reporting.grid import square_grid
from tasks.reporting.log import get_logger
from tasks.reporting.progress import progress
from tasks.shards.dataset import write_json_atomic

HEADLINE = "reliable_accuracy_vs_ceiling"


@dataclass(frozen=True)
class EvaluateCartoonConfig(StageConfig):
    guidance_scales: list[float]
    num_samples: int
    num_inference_steps: int
    scheduler: SamplerName
    seed: int
    batch_size: int
    grid_images: int
    min_ceiling: float
    min_ceiling_over_chance: float

    def __post_init__(self):
        if not self.guidance_scales:
            raise ValueError("evaluate_cartoon.guidance_scales: give at least one scale")
        for name in ("num_samples", "num_inference_steps", "batch_size", "grid_images"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"evaluate_cartoon.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.min_ceiling <= 1:
            raise ValueError(f"evaluate_cartoon.min_ceiling must be in [0, 1], got {self.min_ceiling}")
        if self.min_ceiling_over_chance < 1:
            raise ValueError(
                "evaluate_cartoon.min_ceiling_over_chance must be >= 1 (1 = chance), "
                f"got {self.min_ceiling_over_chance}"
            )


# ---------------------------------------------------------------------------------------------
# The headline: which attributes the judge can read, and accuracy against that ceiling
# ---------------------------------------------------------------------------------------------


def scale_key(scale: float) -> str:
    return f"guidance_{scale:g}"


def reliable_attributes(
    ceiling: Mapping[str, float], counts: Mapping[str, int], min_ceiling: float, min_ceiling_over_chance: float
) -> list[str]:
    """Attributes whose judge is right on real images often enough, and well enough above chance,
    that a miss on a generated image is mostly the model's."""
    return [n for n, c in ceiling.items() if c >= min_ceiling and c >= min_ceiling_over_chance / counts[n]]


def headline(accuracy: Mapping[str, float], ceiling: Mapping[str, float], reliable: Sequence[str]) -> float:
    """Mean of accuracy / ceiling over the reliable attributes; NaN when none is reliable."""
    if not reliable:
        return float("nan")
    return float(np.mean([accuracy[n] / ceiling[n] for n in reliable]))


def best_scale(headline_by_scale: Mapping[float, float]) -> float:
    """The scale with the highest headline; ties go to the smaller scale (less over-saturation)."""
    finite = {s: h for s, h in headline_by_scale.items() if not math.isnan(h)}
    if not finite:
        raise ValueError("no guidance scale has a headline: no attribute is reliable")
    return min(finite, key=lambda s: (-finite[s], s))


def judge_ceiling(classifier_metrics: str, names: Sequence[str]) -> dict[str, float]:
    """The judge's per-attribute accuracy on real validation images (train_attribute_classifier)."""
    data = json.loads(Path(classifier_metrics).read_text())
    ceiling = data.get("val_accuracy")
    if not isinstance(ceiling, dict):
        raise ValueError(
            f"{classifier_metrics}: no 'val_accuracy' mapping (is it train_attribute_classifier's metrics?)"
        )
    missing = [n for n in names if n not in ceiling]
    if missing:
        raise ValueError(f"{classifier_metrics}: no val_accuracy for {missing}; retrain the classifier on this layout")
    return {n: float(ceiling[n]) for n in names}


def summarise(
    accuracy_by_scale: Mapping[float, Mapping[str, float]],
    ceiling: Mapping[str, float],
    counts: Mapping[str, int],
    cfg: EvaluateCartoonConfig,
) -> tuple[dict, dict]:
    """(headline metrics: small and flat, per-attribute detail) from the raw accuracies."""
    reliable = reliable_attributes(ceiling, counts, cfg.min_ceiling, cfg.min_ceiling_over_chance)
    if not reliable:
        raise ValueError(
            f"the judge reads no attribute reliably (ceiling >= {cfg.min_ceiling} and >= "
            f"{cfg.min_ceiling_over_chance}x chance); ceilings: {dict(ceiling)}. Train a better "
            "classifier or lower evaluate_cartoon.min_ceiling"
        )
    heads = {s: headline(acc, ceiling, reliable) for s, acc in accuracy_by_scale.items()}
    best = best_scale(heads)
    metrics = {
        HEADLINE: heads[best],
        "best_guidance": best,
        "reliable_attributes": len(reliable),
        "accuracy_mean_all": float(np.mean(list(accuracy_by_scale[best].values()))),
        **{f"{HEADLINE}_{scale_key(s)}": h for s, h in heads.items()},
    }
    detail = {
        "rule": {
            "min_ceiling": cfg.min_ceiling,
            "min_ceiling_over_chance": cfg.min_ceiling_over_chance,
            "headline": f"mean over reliable attributes of accuracy / ceiling ({HEADLINE})",
        },
        "num_samples": cfg.num_samples,
        "reliable": reliable,
        "attributes": {
            n: {
                "variants": counts[n],
                "chance": 1 / counts[n],
                "ceiling": ceiling[n],
                "reliable": n in reliable,
                "accuracy": {scale_key(s): acc[n] for s, acc in accuracy_by_scale.items()},
            }
            for n in ceiling
        },
        "accuracy_mean_all": {scale_key(s): float(np.mean(list(acc.values()))) for s, acc in accuracy_by_scale.items()},
    }
    return metrics, detail


# ---------------------------------------------------------------------------------------------
# Sampling and grids
# ---------------------------------------------------------------------------------------------


def val_attribute_sets(shard_dir: str, n: int) -> torch.Tensor:
    """The first `n` validation attribute sets in shard order (the same for every run)."""
    out = []
    for batch in cartoon_loader(shard_dir, "val", batch_size=256, shuffle=False, drop_last=False):
        out.append(batch["attrs"])
    attrs = torch.cat(out)
    if len(attrs) < n:
        raise ValueError(f"asked for {n} validation attribute sets, {shard_dir} has {len(attrs)}")
    return attrs[:n]


def generate(
    pipe: CartoonDiffusionPipeline, attrs: torch.Tensor, scale: float, steps: int, seed: int, batch_size: int
) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1]; image i starts from the same noise at every scale (seed + i)."""
    images = []
    for start in range(0, len(attrs), batch_size):
        chunk = attrs[start : start + batch_size]
        generators = [torch.Generator(device=pipe.device).manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(chunk, guidance_scale=scale, num_inference_steps=steps, generator=generators, output_type="pt")
        images.append(out.images.cpu() * 2 - 1)
    return torch.cat(images)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def labelled_grid(images: list[Image.Image], text: str) -> Image.Image:
    """A near-square grid enlarged 2x, with a caption above."""
    grid = square_grid(images, scale=2)
    out = Image.new("RGB", (grid.width, grid.height + 14), (255, 255, 255))
    out.paste(grid, (0, 14))
    ImageDraw.Draw(out).text((2, 1), text, fill=(0, 0, 0))
    return out


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def load_models(model_dir: str, classifier_dir: str, scheduler: str):
    pipe = CartoonDiffusionPipeline.from_pretrained(model_dir)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    classifier = AttributeClassifier.from_pretrained(classifier_dir).eval()
    names = list(pipe.attribute_names)
    if list(classifier.config.attribute_names) != names or list(classifier.config.attribute_counts) != list(
        pipe.tau.attribute_counts
    ):
        raise ValueError("the classifier and the diffusion model were trained on different attribute layouts")
    return pipe, classifier


def run_evaluation(
    model_dir: str,
    classifier_dir: str,
    classifier_metrics: str,
    shard_dir: str,
    out_dir: str,
    metrics_path: str,
    attributes_path: str,
    cfg: EvaluateCartoonConfig,
) -> dict:
    """Sample, judge, write grids + GIF, the headline metrics and the per-attribute detail."""
    log = get_logger()
    t0 = time.perf_counter()
    pipe, classifier = load_models(model_dir, classifier_dir, cfg.scheduler)
    names = list(pipe.attribute_names)
    counts = dict(zip(names, pipe.tau.attribute_counts))
    ceiling = judge_ceiling(classifier_metrics, names)
    attrs = val_attribute_sets(shard_dir, cfg.num_samples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accuracy_by_scale, frames = {}, []
    for scale in progress([float(s) for s in cfg.guidance_scales], desc="guidance scales", unit="scale"):
        images = generate(pipe, attrs, scale, cfg.num_inference_steps, cfg.seed, cfg.batch_size)
        accuracy_by_scale[scale] = per_attribute_accuracy(classifier.predict(images), attrs, names)
        grid = labelled_grid(to_pil(images[: cfg.grid_images]), f"guidance {scale:g}")
        grid.save(out / f"grid_{scale_key(scale)}.png")
        frames.append(grid)
    frames[0].save(out / "guidance_scales.gif", save_all=True, append_images=frames[1:], duration=800, loop=0)

    metrics, detail = summarise(accuracy_by_scale, ceiling, counts, cfg)
    metrics["model_folder_identity"] = folder_identity(model_dir)  # the model card shows figures of this folder only
    for path, data in ((metrics_path, metrics), (attributes_path, detail)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    by_scale = ", ".join(f"{s:g}: {metrics[f'{HEADLINE}_{scale_key(s)}']:.3f}" for s in accuracy_by_scale)
    log.info(
        f"judged on {detail['reliable']} (the attributes the judge reads reliably); accuracy / ceiling by "
        f"guidance {{{by_scale}}}; best guidance {metrics['best_guidance']:g}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return metrics


@task(name="evaluate_cartoon", cache_policy=NO_CACHE)
def evaluate_cartoon_task(
    model_dir: str,
    classifier_dir: str,
    classifier_metrics: str,
    shard_dir: str,
    out_dir: str,
    metrics_path: str,
    attributes_path: str,
    cfg: EvaluateCartoonConfig,
) -> str:
    """Sample, judge with the classifier, write grids, GIF and metrics; returns the metrics path."""
    run_evaluation(
        model_dir, classifier_dir, classifier_metrics, shard_dir, out_dir, metrics_path, attributes_path, cfg
    )
    return metrics_path

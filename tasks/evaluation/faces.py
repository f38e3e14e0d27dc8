"""Stage evaluate_faces: are the base model's samples faces, and is the fine-tuned model the subject?

Every image set goes through the same dlib features (tasks/evaluation/features.py) and the same
metrics (tasks/evaluation/metrics.py):

- real validation faces, split in two halves by position: the first half ("reference") is what
  every generated set is compared with; the second ("held-out") against the reference gives the
  real-vs-real *floor* of each distribution metric at the same sizes;
- the base model's samples, and an *untrained* reference: the same UNet config randomly
  initialised (seeded), with the same VAE and scheduler, to show where "not faces" sits;
- with a fine-tuned subject model (pipelines/dreambooth.py): subject samples (label 1) and class
  samples (label 0), compared with the subject photos and the base samples.

Sample i of every model starts from the noise of `seed + i` (one generator per image), so the grids
show the same seeds side by side and the same model always gives the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipelines import LatentDiffusionPipeline, make_scheduler
from pipelines.autoencoder import vae_scale_factor
from pipelines.dreambooth import load_subject_pipeline
from pipelines.ldm_base import load_latent_base
from tasks.config.samples import SamplerName
from tasks.config.typed import StageConfig
from tasks.evaluation import metrics as M
from tasks.evaluation.features import DlibFaceExtractor, FaceFeatures, FeatureConfig
from tasks.evaluation.targets import CLASS_DRIFT, ID_ABOVE_BASE, ID_CEILING_SHARE
from tasks.latent.images import load_split
from tasks.shards.dataset import read_manifest

SUBJECT_MODES = ("auto", "required", "off")


@dataclass(frozen=True)
class KidConfig(StageConfig):
    num_subsets: int  # random subsets the unbiased MMD^2 is averaged over
    subset_size: int  # per subset, capped at the smaller set's number of detected faces
    seed: int


@dataclass(frozen=True)
class EvaluateFacesConfig(StageConfig):
    real_splits: list[str]  # splits of data/faces/aligned whose faces are "real"
    num_samples: int  # per generated set (base, untrained, subject, class)
    batch_size: int
    scheduler: SamplerName
    num_inference_steps: int
    seed: int  # sample i starts from the noise of seed + i, in every model
    subject: str  # auto (evaluate when the subject model exists) | required | off
    subject_guidance_scale: float  # identifier models: guidance from the class label to the subject label (1: none)
    grid_images: int  # columns of the side-by-side grid
    k_nearest: int  # precision/recall ball size (Kynkäänniemi et al.: 3)
    min_detect_ratio: float  # target: samples' face_detect_rate >= this x the real faces' rate
    features: FeatureConfig
    kid: KidConfig

    def __post_init__(self):
        if self.subject not in SUBJECT_MODES:
            raise ValueError(f"evaluate_faces.subject must be one of {SUBJECT_MODES}, got {self.subject!r}")
        if not self.real_splits:
            raise ValueError("evaluate_faces.real_splits must name at least one split of the aligned faces")
        if self.subject_guidance_scale < 1.0:
            raise ValueError(
                f"evaluate_faces.subject_guidance_scale must be >= 1 (1: the subject label alone), "
                f"got {self.subject_guidance_scale}"
            )
        if self.num_samples < 2 or self.batch_size < 1 or self.num_inference_steps < 1:
            raise ValueError("evaluate_faces: num_samples >= 2, batch_size >= 1, num_inference_steps >= 1")


# --- images --------------------------------------------------------------------------------------


def load_faces(
    dataset_dir: str | Path, splits: list[str] | None, resolution: int | None, limit: int | None = None
) -> list[np.ndarray]:
    """uint8 RGB faces of the given splits (None: every split in the manifest), in stored order."""
    available = list(read_manifest(dataset_dir)["splits"])
    for split in splits or []:
        if split not in available:
            raise KeyError(f"{dataset_dir} has no split {split!r}; it has {available}")
    images: list[np.ndarray] = []
    for split in splits or available:
        images.extend(load_split(dataset_dir, split, resolution, limit=limit)[1])
    return images


def sample_images(pipe, cfg: EvaluateFacesConfig, **call_kwargs) -> list[np.ndarray]:
    """cfg.num_samples images from `pipe` as uint8 RGB; image i from a generator seeded seed + i."""
    import torch

    pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out: list[np.ndarray] = []
    for start in range(0, cfg.num_samples, cfg.batch_size):
        idx = range(start, min(start + cfg.batch_size, cfg.num_samples))
        gens = [torch.Generator(device="cpu").manual_seed(cfg.seed + i) for i in idx]
        batch = pipe(
            batch_size=len(gens),
            num_inference_steps=cfg.num_inference_steps,
            generator=gens,
            output_type="np",
            **call_kwargs,
        ).images
        out.extend((np.clip(batch, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    return out


def vae_round_trip(pipe, images: list[np.ndarray]) -> list[np.ndarray]:
    """`images` encoded by the pipeline's VAE (posterior mean) and decoded again: the closest any
    sample of this latent model can come to them."""
    import torch

    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        encoded = pipe.vae.encode(x.to(pipe.vae.device, pipe.vae.dtype))
        # a VQModel has no posterior: its latents are the encoder output before quantisation
        z = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        out = pipe.decode_latents(z * pipe.vae.config.scaling_factor).float().cpu()
    return list(((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def load_base_pipeline(base_dir: str | Path):
    """The DreamBooth base (params `dreambooth_base`), in this project's layout or diffusers' LDMPipeline's."""
    return load_latent_base(base_dir)


def untrained_pipeline(base_pipe, seed: int):
    """The base pipeline with its UNet replaced by the same config, randomly initialised (seeded)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel.from_config(base_pipe.unet.config)
    return LatentDiffusionPipeline(unet=unet.eval(), vae=base_pipe.vae, scheduler=base_pipe.scheduler)


def load_subject_model(model_dir: str | Path):
    return load_subject_pipeline(str(model_dir))


# --- metrics -------------------------------------------------------------------------------------


def split_real(features: FaceFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Reference and held-out halves of the real descriptors (even / odd positions: deterministic,
    and both halves span the whole stored order)."""
    d = features.descriptors
    return d[0::2], d[1::2]


def distribution_metrics(reference: np.ndarray, other: np.ndarray, cfg: EvaluateFacesConfig) -> dict[str, Any]:
    """fd/kid/precision/recall of `other` against `reference`; None where too few faces were found."""
    out: dict[str, Any] = {"num_faces": int(len(other))}
    try:
        out["fd_dlib"] = M.frechet_distance(reference, other)
    except M.NotEnoughSamples:
        out["fd_dlib"] = None
    try:
        mean, std, size = M.kernel_inception_distance(
            reference, other, cfg.kid.num_subsets, cfg.kid.subset_size, cfg.kid.seed
        )
        out.update(kid_dlib=mean, kid_dlib_std=std, kid_subset_size=size)
    except M.NotEnoughSamples:
        out.update(kid_dlib=None, kid_dlib_std=None, kid_subset_size=0)
    try:
        out["precision_dlib"], out["recall_dlib"] = M.precision_recall(reference, other, cfg.k_nearest)
    except M.NotEnoughSamples:
        out["precision_dlib"] = out["recall_dlib"] = None
    return out


def _or_none(fn: Callable, *args) -> float | None:
    try:
        return fn(*args)
    except M.NotEnoughSamples:
        return None


def subject_targets(m: dict) -> dict[str, Any]:
    """Whether the subject model meets the DreamBooth targets (False when a figure is missing)."""
    subj, cls, base, ceiling = m["id_top1"], m["id_top1_class"], m["id_top1_base"], m["id_top1_ceiling"]
    identity_ok = (
        None not in (subj, base, ceiling) and subj >= ID_CEILING_SHARE * ceiling and subj >= base + ID_ABOVE_BASE
    )
    prior_ok = None not in (cls, base) and abs(cls - base) <= CLASS_DRIFT
    return {"subject_identity_ok": bool(identity_ok), "subject_prior_ok": bool(prior_ok)}


def targets(base: dict, untrained: dict, floor: dict, real_rate: float, min_ratio: float) -> dict[str, Any]:
    """The face-track targets: detection near the real faces' rate, KID nearer the floor than the
    untrained model. An untrained model with too few faces for a KID counts as infinitely far."""
    detect_ok = base["face_detect_rate"] >= min_ratio * real_rate
    kid, kid_floor, kid_untrained = base["kid_dlib"], floor["kid_dlib"], untrained["kid_dlib"]
    if kid is None or kid_floor is None:
        kid_ok = False
    else:
        far = math.inf if kid_untrained is None else abs(kid - kid_untrained)
        kid_ok = abs(kid - kid_floor) < far
    return {"detect_rate_ok": bool(detect_ok), "kid_ok": bool(kid_ok), "target_met": bool(detect_ok and kid_ok)}


@dataclass
class RealFaces:
    """Features of the real validation faces, shared by the base and subject evaluations."""

    images: list[np.ndarray]
    features: FaceFeatures

    @property
    def reference(self) -> np.ndarray:
        return split_real(self.features)[0]


def real_faces(
    aligned_dir: str | Path, resolution: int, cfg: EvaluateFacesConfig, extractor: DlibFaceExtractor
) -> RealFaces:
    images = load_faces(aligned_dir, list(cfg.real_splits), resolution)
    return RealFaces(images=images, features=extractor(images))


def model_resolution(pipe) -> int:
    """Output side of a latent pipeline: latent side x the VAE's downsampling factor."""
    factor = vae_scale_factor(pipe.vae)
    return int(pipe.unet.config.sample_size) * factor


def evaluate_base(
    base_dir: str | Path,
    aligned_dir: str | Path,
    cfg: EvaluateFacesConfig,
    extractor: DlibFaceExtractor,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Real faces, base samples and untrained samples: features, metrics and images."""
    base_pipe = load_base_pipeline(base_dir)
    resolution = model_resolution(base_pipe)
    real = real_faces(aligned_dir, resolution, cfg, extractor)
    ref, held_out = split_real(real.features)
    log(
        f"evaluate_faces: {len(real.images)} real {'+'.join(cfg.real_splits)} faces at {resolution} px, "
        f"{real.features.detect_rate:.0%} detected ({len(ref)} reference, {len(held_out)} held out)"
    )
    sets = {
        "base": sample_images(base_pipe, cfg),
        "untrained": sample_images(untrained_pipeline(base_pipe, cfg.seed), cfg),
    }
    result: dict[str, Any] = {
        "resolution": resolution,
        "real": real,
        "images": sets,
        "features": {},
        "metrics": {"real_vs_real": distribution_metrics(ref, held_out, cfg)},
    }
    result["metrics"]["real_vs_real"]["face_detect_rate"] = real.features.detect_rate
    for name, images in sets.items():
        feats = extractor(images)
        result["features"][name] = feats
        result["metrics"][name] = {
            "face_detect_rate": feats.detect_rate,
            **distribution_metrics(ref, feats.descriptors, cfg),
        }
        log(
            f"evaluate_faces: {name}: {feats.detect_rate:.0%} faces detected, "
            f"kid_dlib {result['metrics'][name]['kid_dlib']}"
        )
    return result


def evaluate_subject_model(
    model_dir: str | Path,
    base_dir: str | Path,
    subject_dir: str | Path,
    aligned_dir: str | Path,
    cfg: EvaluateFacesConfig,
    *,
    extractor: DlibFaceExtractor | None = None,
    base: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Identity, prior preservation, diversity and memorisation of one fine-tuned subject model.

    Returns {"metrics": {...}, "images": {"subject": [...], "class": [...]}}. `extractor` and `base`
    (an `evaluate_base` result) may be passed to reuse them across several variant models.
    """
    extractor = extractor or DlibFaceExtractor(cfg.features)
    base = base or evaluate_base(base_dir, aligned_dir, cfg, extractor, log)
    pipe = load_subject_model(model_dir)
    photos = load_faces(subject_dir, None, base["resolution"])
    photo_feats = extractor(photos)
    recon_d = extractor(vae_round_trip(pipe, photos)).descriptors
    guidance = {"guidance_scale": cfg.subject_guidance_scale} if getattr(pipe, "has_identifier", False) else {}
    images = {
        "subject": sample_images(pipe, cfg, subject=True, **guidance),
        "class": sample_images(pipe, cfg, subject=False),
    }
    feats = {name: extractor(ims) for name, ims in images.items()}
    subj, cls = feats["subject"].descriptors, feats["class"].descriptors
    photo_d, real_d = photo_feats.descriptors, base["real"].features.descriptors
    base_d = base["features"]["base"].descriptors
    metrics: dict[str, Any] = {
        "num_subject_photos": len(photos),
        "face_detect_rate_photos": photo_feats.detect_rate,
        "face_detect_rate_subject": feats["subject"].detect_rate,
        "face_detect_rate_class": feats["class"].detect_rate,
        # identity: how often the subject samples fall nearest a subject photo; the class samples'
        # share beside it says how much the subject leaks into the class (prior preservation)
        "id_top1": _or_none(M.id_top1, subj, photo_d, real_d),
        "id_top1_class": _or_none(M.id_top1, cls, photo_d, real_d),
        "id_top1_base": _or_none(M.id_top1, base_d, photo_d, real_d),
        "id_top1_ceiling": _or_none(M.id_top1_ceiling, photo_d, real_d),
        # the photos through the model's VAE and back: where a latent model's identity tops out
        "id_top1_vae_round_trip": _or_none(M.id_top1, recon_d, photo_d, real_d),
        # standard errors: each share is over the samples in which a face was found
        "id_top1_se": M.rate_standard_error(_or_none(M.id_top1, subj, photo_d, real_d), len(subj)),
        "id_top1_class_se": M.rate_standard_error(_or_none(M.id_top1, cls, photo_d, real_d), len(cls)),
        "id_top1_base_se": M.rate_standard_error(_or_none(M.id_top1, base_d, photo_d, real_d), len(base_d)),
        "identity_distance": _or_none(M.centroid_distance, subj, photo_d),
        "identity_distance_class": _or_none(M.centroid_distance, cls, photo_d),
        "identity_distance_photos": _or_none(M.centroid_distance, photo_d, photo_d),
        # diversity: DreamBooth's DIV on descriptors, with the photos' own spread beside it
        "diversity": _or_none(M.mean_pairwise_distance, subj),
        "diversity_photos": _or_none(M.mean_pairwise_distance, photo_d),
        # memorisation: a sample much nearer a photo than the photos are to each other is a copy
        "nearest_photo_distance": _or_none(M.nearest_distance, subj, photo_d),
        "nearest_photo_distance_photos": _or_none(M.leave_one_out_nearest, photo_d),
        # prior preservation: class samples against the base model's samples
        "prior": distribution_metrics(base_d, cls, cfg) if len(base_d) >= 2 else None,
        "class_vs_real": distribution_metrics(base["real"].reference, cls, cfg),
    }
    log(
        f"evaluate_faces: {model_dir}: id_top1 {metrics['id_top1']}, class id_top1 {metrics['id_top1_class']}, "
        f"subject detect {metrics['face_detect_rate_subject']:.0%}"
    )
    return {"metrics": metrics, "images": images, "has_identifier": bool(getattr(pipe, "has_identifier", False))}


# --- outputs -------------------------------------------------------------------------------------


def headline(base: dict, subject: dict | None, cfg: EvaluateFacesConfig) -> dict[str, Any]:
    """The flat metrics file: the few keys `dvc metrics diff` should show."""
    m = base["metrics"]
    floor, b, u = m["real_vs_real"], m["base"], m["untrained"]
    real_rate = floor["face_detect_rate"]
    out: dict[str, Any] = {
        "face_detect_rate": b["face_detect_rate"],
        "face_detect_rate_real": real_rate,
        "face_detect_rate_untrained": u["face_detect_rate"],
        "kid_dlib": b["kid_dlib"],
        "kid_dlib_std": b["kid_dlib_std"],
        "kid_dlib_floor": floor["kid_dlib"],
        "kid_dlib_untrained": u["kid_dlib"],
        "fd_dlib": b["fd_dlib"],
        "fd_dlib_floor": floor["fd_dlib"],
        "fd_dlib_untrained": u["fd_dlib"],
        "precision_dlib": b["precision_dlib"],
        "recall_dlib": b["recall_dlib"],
        "precision_dlib_floor": floor["precision_dlib"],
        "recall_dlib_floor": floor["recall_dlib"],
        **targets(b, u, floor, real_rate, cfg.min_detect_ratio),
    }
    if subject is not None:
        s = subject["metrics"]
        out.update(
            {
                k: s[k]
                for k in (
                    "id_top1",
                    "id_top1_class",
                    "identity_distance",
                    "diversity",
                    "diversity_photos",
                    "nearest_photo_distance",
                    "nearest_photo_distance_photos",
                    "face_detect_rate_subject",
                )
            }
        )
        out.update(
            {
                k: s[k]
                for k in ("id_top1_base", "id_top1_ceiling", "id_top1_vae_round_trip", "id_top1_se", "id_top1_class_se")
            }
        )
        out["kid_dlib_prior"] = s["prior"]["kid_dlib"] if s["prior"] else None
        out.update(subject_targets(s))
    return out


def image_grid(rows: list[tuple[str, list[np.ndarray]]], cols: int, cell: int) -> Image.Image:
    """Labelled rows of images, each resized to cell x cell (nearest: pixels stay visible)."""
    label_w = 80
    grid = Image.new("RGB", (label_w + cols * cell, len(rows) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * cell + cell // 2 - 6), label, fill=(0, 0, 0))
        for c, im in enumerate(images[:cols]):
            tile = Image.fromarray(im).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_w + c * cell, r * cell))
    return grid


def write_grids(out_dir: str | Path, base: dict, subject: dict | None, cfg: EvaluateFacesConfig) -> list[str]:
    """eval/faces/comparison.png (every set side by side, same seeds per column) and one grid per set."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, cell = cfg.grid_images, max(base["resolution"], 64)
    rows = [
        ("real", base["real"].images[:n]),
        ("base", base["images"]["base"][:n]),
        ("untrained", base["images"]["untrained"][:n]),
    ]
    if subject is not None:
        rows += [("subject", subject["images"]["subject"][:n]), ("class", subject["images"]["class"][:n])]
    written = []
    for name, images in [("comparison", None)] + rows:
        grid_rows = rows if images is None else [(name, images)]
        path = out_dir / f"{name}.png"
        image_grid(grid_rows, n, cell).save(path)
        written.append(str(path))
    return written


def details(base: dict, subject: dict | None, cfg: EvaluateFacesConfig) -> dict[str, Any]:
    """Everything behind the headline: per-set metrics, counts and the feature preprocessing."""
    real = base["real"]
    ref, held = split_real(real.features)
    return {
        "config": cfg.to_dict(),
        "resolution": base["resolution"],
        "counts": {
            "real": len(real.images),
            "real_detected": int(real.features.detected.sum()),
            "reference": len(ref),
            "held_out": len(held),
            "samples_per_set": cfg.num_samples,
        },
        "sets": base["metrics"],
        "subject": None if subject is None else {"has_identifier": subject["has_identifier"], **subject["metrics"]},
    }

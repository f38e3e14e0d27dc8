"""The face base model under several samplers: evaluate_faces' base-model figures for each.

    .venv/bin/python -m benchmarks.compare_samplers [--base-dir models/ldm] [--aligned-dir data/faces/aligned]
        [--num-samples 128] [--weights checkpoints/train_ldm/checkpoint-1120/model.safetensors]
        ddim:25 dpm:25 dpm_sde:25 ddpm:100:trailing ...

Each argument is scheduler:steps[:spacing] (spacing: leading, the saved default, or trailing). Every
other setting (real faces, features, seeds, k, KID subsets) is params.yaml's evaluate_faces, so the
figures are the stage's own. `--weights` swaps in other UNet weights of the same model, e.g. a
checkpoint's online (not EMA) ones. Prints one markdown row per sampler (docs/faces_quality.md).
Needs the repo's outputs (`dvc repro train_ldm` first).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import yaml

from tasks.evaluation.faces import (
    EvaluateFacesConfig,
    distribution_metrics,
    load_base_pipeline,
    model_resolution,
    real_faces,
    sample_images,
    split_real,
)
from tasks.evaluation.features import DlibFaceExtractor

HEADER = (
    "| sampler | steps | spacing | faces found | `fd_dlib` | `kid_dlib` | precision | recall | s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def parse_sampler(text: str) -> tuple[str, int, str]:
    """'dpm_sde:25' -> ('dpm_sde', 25, 'leading'); 'ddpm:100:trailing' -> ('ddpm', 100, 'trailing')."""
    parts = text.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[1].isdigit()
        or (len(parts) == 3 and parts[2] not in ("leading", "trailing"))
    ):
        raise argparse.ArgumentTypeError(f"expected scheduler:steps[:leading|trailing], got {text!r}")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "leading"


def _fmt(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def compare(
    base_dir: str,
    aligned_dir: str,
    samplers: list[tuple[str, int, str]],
    cfg: EvaluateFacesConfig,
    weights: str | None = None,
) -> list[dict]:
    pipe = load_base_pipeline(base_dir)
    if weights:
        from safetensors.torch import load_file

        pipe.unet.load_state_dict(load_file(weights))
    saved = dict(pipe.scheduler.config)
    rows = []
    with DlibFaceExtractor(cfg.features) as extractor:
        real = real_faces(aligned_dir, model_resolution(pipe), cfg, extractor)
        reference = split_real(real.features)[0]
        print(f"real faces: {len(real.images)}, {real.features.detect_rate:.0%} found", flush=True)
        print(HEADER, flush=True)
        for name, steps, spacing in samplers:
            # sample_images builds `name` from the pipeline's scheduler config: the spacing travels in it
            pipe.scheduler = pipe.scheduler.from_config({**saved, "timestep_spacing": spacing})
            start = time.perf_counter()
            images = sample_images(pipe, dataclasses.replace(cfg, scheduler=name, num_inference_steps=steps))
            seconds = time.perf_counter() - start
            feats = extractor(images)
            m = distribution_metrics(reference, feats.descriptors, cfg)
            rows.append(
                {
                    "scheduler": name,
                    "steps": steps,
                    "spacing": spacing,
                    "face_detect_rate": feats.detect_rate,
                    "seconds": seconds,
                    **m,
                }
            )
            print(
                f"| {name} | {steps} | {spacing} | {feats.detect_rate:.0%} | {_fmt(m['fd_dlib'], 3)} | "
                f"{_fmt(m['kid_dlib'], 4)} | {_fmt(m['precision_dlib'], 2)} | {_fmt(m['recall_dlib'], 2)} | "
                f"{seconds:.0f} |",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("samplers", nargs="+", type=parse_sampler, help="scheduler:steps[:leading|trailing]")
    p.add_argument("--base-dir", default="models/ldm")
    p.add_argument("--aligned-dir", default="data/faces/aligned")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--num-samples", type=int, default=None, help="per sampler (default: evaluate_faces.num_samples)")
    p.add_argument("--weights", default=None, help="a .safetensors of UNet weights to use instead of the saved ones")
    args = p.parse_args(argv)
    cfg = EvaluateFacesConfig.from_params(
        yaml.safe_load(Path(args.params).read_text())["evaluate_faces"], "evaluate_faces"
    )
    if args.num_samples:
        cfg = dataclasses.replace(cfg, num_samples=args.num_samples)
    return compare(args.base_dir, args.aligned_dir, args.samplers, cfg, args.weights)


if __name__ == "__main__":
    main()

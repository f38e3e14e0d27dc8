"""The DreamBooth comparison table of docs/dreambooth.md: base model; fine-tuned without prior
preservation; prior preservation without identifier (the seed's method); prior + identifier (the
default); LoRA (+ identifier). Each variant is trained by train_dreambooth's own code from params.yaml's
section with the variant's overrides, and measured by the face evaluation's `evaluate_subject_model`.

    .venv/bin/python -m benchmarks.dreambooth_table [--repo .] [--out /tmp/dreambooth_table] [--num-samples 128]

Needs the repo's outputs up to train_dreambooth's inputs (`dvc repro sample_class encode_subject`).
A model without an identifier has one distribution: its "class samples" are its ordinary samples
(`subject` is dropped for it), which is what a user of that model gets when asking for a face.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

VARIANTS = {
    "finetune, no prior": {"prior_preservation": False, "identifier": False},
    "prior, no identifier": {"prior_preservation": True, "identifier": False},
    "prior + identifier": {},
    "LoRA, prior + identifier": {"method": "lora"},
}


def eval_config(num_samples: int):
    """evaluate_faces' own config from params.yaml (same features, sets and seeds as the stage),
    with `num_samples` per generated set."""
    from tasks.config.params import stage_params
    from tasks.evaluation.faces import EvaluateFacesConfig

    params = stage_params("evaluate_faces")
    return EvaluateFacesConfig.from_params(
        {**params, "num_samples": num_samples, "subject": "required"}, "evaluate_faces"
    )


def merge(base: dict, over: dict) -> dict:
    """A copy of `base` with `over` merged in as profiles are (nested sections key by key)."""
    import copy

    from tasks.config.params import _merge_into

    out = copy.deepcopy(base)
    _merge_into(out, over)
    return out


class _OneDistribution:
    """A model without an identifier, asked for `subject=False`, draws what it always draws."""

    def __init__(self, pipe):
        self._pipe = pipe

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __setattr__(self, name, value):
        setattr(self._pipe, name, value) if name != "_pipe" else object.__setattr__(self, name, value)

    def __call__(self, *args, subject: bool = True, **kwargs):
        return self._pipe(*args, **kwargs)


def _loader(model_dir):
    from pipelines.dreambooth import load_subject_pipeline

    pipe = load_subject_pipeline(str(model_dir))
    return pipe if pipe.has_identifier else _OneDistribution(pipe)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=".")
    ap.add_argument("--out", default="/tmp/dreambooth_table")
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--override", default="{}", help="JSON merged into train_dreambooth's params for every variant")
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    args = ap.parse_args()
    import os

    import tasks.evaluation.faces as EF
    from tasks.config.params import stage_params
    from tasks.dreambooth.config import TrainDreamboothConfig
    from tasks.dreambooth.train import run_training
    from tasks.evaluation.faces import evaluate_base, evaluate_subject_model, load_faces
    from tasks.evaluation.features import DlibFaceExtractor
    from tasks.evaluation.metrics import id_top1_ceiling

    repo, out = Path(args.repo).resolve(), Path(args.out)
    os.chdir(repo)
    params = merge(stage_params("train_dreambooth"), json.loads(args.override))
    cfg = eval_config(args.num_samples)
    extractor = DlibFaceExtractor(cfg.features)
    base = evaluate_base("models/ldm", "data/faces/aligned", cfg, extractor, log=print)
    EF.load_subject_model = _loader  # see _OneDistribution
    photos = extractor(load_faces("data/faces/subject", None, base["resolution"]))
    real_d = base["real"].features.descriptors
    ceiling = id_top1_ceiling(photos.descriptors, real_d)
    rows = []
    for name, over in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        run = out / name.replace(" ", "_").replace(",", "").replace("+", "and")
        p = merge(params, {**over, "samples": {"num_images": 0}})
        t0 = time.perf_counter()
        run_training(
            "data/faces/subject_latents",
            "data/faces/class_latents",
            "models/ldm",
            str(run / "model"),
            str(run / "ckpt"),
            str(run / "live"),
            str(run / "metrics.json"),
            TrainDreamboothConfig.from_params(p, "train_dreambooth"),
            show_progress=False,
        )
        seconds = time.perf_counter() - t0
        evals = [(name, cfg)]
        if name == "prior + identifier" and cfg.subject_guidance_scale != 1:  # what the guidance adds
            evals.append((f"{name}, guidance 1", dataclasses.replace(cfg, subject_guidance_scale=1.0)))
        for label, c in evals:
            m = evaluate_subject_model(
                run / "model",
                "models/ldm",
                "data/faces/subject",
                "data/faces/aligned",
                c,
                extractor=extractor,
                base=base,
                log=print,
            )["metrics"]
            rows.append(
                {
                    "variant": label,
                    "seconds": seconds,
                    **{
                        k: m[k]
                        for k in (
                            "id_top1",
                            "id_top1_se",
                            "id_top1_class",
                            "id_top1_class_se",
                            "id_top1_base",
                            "id_top1_base_se",
                            "id_top1_vae_round_trip",
                            "diversity",
                            "diversity_photos",
                            "nearest_photo_distance",
                            "nearest_photo_distance_photos",
                            "face_detect_rate_subject",
                            "face_detect_rate_class",
                        )
                    },
                    "kid_prior": (m["prior"] or {}).get("kid_dlib"),
                    "fd_prior": (m["prior"] or {}).get("fd_dlib"),
                }
            )
            print(json.dumps(rows[-1]))
    extractor.close()
    n_det = lambda rate: max(1, round(rate * args.num_samples))  # noqa: E731
    result = {
        "num_samples": args.num_samples,
        "photo_ceiling_id_top1": ceiling,
        "real_faces": len(real_d),
        "subject_photos_detected": len(photos.descriptors),
        "base_face_detect_rate": base["metrics"]["base"]["face_detect_rate"],
        "rows": rows,
        "standard_error_at_0.5": 0.5 / math.sqrt(n_det(base["metrics"]["base"]["face_detect_rate"])),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Sample a grid from any model folder this project saves, without writing code.

    python -m pipelines.sample MODEL_DIR --num-images 16 --seed 0 --out grid.png

The folder says what it holds (model_index.json's class, or a DreamBooth adapter record), and each
kind takes its own options:

  cartoon     (CartoonDiffusionPipeline)  --attr NAME=INDEX (repeatable; unnamed attributes are drawn
                                          at random per image), --guidance-scale
  ldm         (LatentDiffusionPipeline)   nothing more
  dreambooth  (SubjectDiffusionPipeline)  --subject (default) / --class, --guidance-scale (identifier
                                          models, subject samples)
  lora        (a DreamBooth adapter)      as dreambooth, plus --base-dir (default: the recorded base)

Every kind takes --steps and --scheduler. An option the kind does not have is an error, not ignored.
The images are the pipeline call's with the same arguments: one call with a CPU generator seeded
with --seed (`torch.Generator().manual_seed(seed)`), so the grid equals what the README's Python
examples draw.

Inference only, importable alone: nothing here imports `tasks` or `flows`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from PIL import Image

from pipelines.folders import ADAPTER_RECORD, PIPELINE_KINDS, model_folder
from pipelines.schedulers import SCHEDULERS, make_scheduler

# Options a kind may take beyond the common ones (argparse dest -> how the user spells it).
FLAGS = {
    "attr": "--attr",
    "guidance_scale": "--guidance-scale",
    "target": "--subject/--class",
    "base_dir": "--base-dir",
}
KIND_OPTIONS = {
    "cartoon": {"attr", "guidance_scale"},
    "ldm": set(),
    "dreambooth": {"target", "guidance_scale"},
    "lora": {"target", "guidance_scale", "base_dir"},
}


class SampleError(ValueError):
    """A request the model cannot serve; main() prints it as one line."""


# ------------------------------------------------------------------------------------ the folder


def model_kind(model_dir: Path) -> str:
    """cartoon | ldm | dreambooth | lora (pipelines/folders.py); any other folder is a SampleError."""
    try:
        folder = model_folder(model_dir)
    except FileNotFoundError as exc:
        raise SampleError(str(exc)) from None
    if folder.kind in KIND_OPTIONS:
        return folder.kind
    if folder.kind == "pipeline":
        raise SampleError(
            f"{model_dir} holds a {folder.class_name}, not a pipeline this command samples "
            f"({', '.join(PIPELINE_KINDS)})"
        )
    if folder.kind == "autoencoder":
        raise SampleError(
            f"{model_dir} is an autoencoder ({folder.class_name}): it reconstructs images, it does "
            f"not sample them; sample the latent diffusion model that decodes with it (e.g. models/ldm)"
        )
    raise SampleError(
        f"{model_dir} holds a single model ({folder.class_name}), not a diffusion pipeline: nothing to sample"
    )


def has_identifier(model_dir: Path, kind: str) -> bool:
    """Whether a DreamBooth folder was trained with an identifier, read from its files (no loading)."""
    if kind == "lora":
        return bool(json.loads((model_dir / ADAPTER_RECORD).read_text())["identifier"])
    return json.loads((model_dir / "unet" / "config.json").read_text()).get("num_class_embeds") is not None


def attribute_layout(model_dir: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A cartoon model's attribute names and variant counts, from its conditioning module's config."""
    config = json.loads((model_dir / "tau" / "config.json").read_text())
    return tuple(config["attribute_names"]), tuple(int(c) for c in config["attribute_counts"])


def load(model_dir: Path, kind: str, base_dir: str | None):
    """The project's pipeline class for the kind (a portable folder loads as it, running no folder
    code). diffusers' "Loading pipeline components" bar is off: the sampling bar is the one that counts."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        if kind == "cartoon":
            from pipelines.cartoon import CartoonDiffusionPipeline

            return CartoonDiffusionPipeline.from_pretrained(str(model_dir))
        if kind == "ldm":
            from pipelines.latent import LatentDiffusionPipeline

            return LatentDiffusionPipeline.from_pretrained(str(model_dir))
        from pipelines.dreambooth import load_subject_pipeline

        return load_subject_pipeline(model_dir, base_dir=base_dir)
    finally:
        diffusers_logging.enable_progress_bar()


# ------------------------------------------------------------------------------------ options


def check_options(args: argparse.Namespace, kind: str) -> None:
    """Every kind-specific option the user gave must be one this kind has."""
    given = [dest for dest in FLAGS if getattr(args, dest) not in (None, [])]
    foreign = [FLAGS[d] for d in given if d not in KIND_OPTIONS[kind]]
    if foreign:
        own = ", ".join(FLAGS[d] for d in sorted(KIND_OPTIONS[kind])) or "none beyond --steps and --scheduler"
        raise SampleError(
            f"{', '.join(foreign)}: not an option for a {kind} model ({args.model_dir}); its options: {own}"
        )
    if args.num_images < 1:
        raise SampleError(f"--num-images must be >= 1, got {args.num_images}")
    if args.steps is not None and args.steps < 1:
        raise SampleError(f"--steps must be >= 1, got {args.steps}")


def parse_attributes(pairs: list[str], names: tuple[str, ...], counts: tuple[int, ...]) -> dict[str, int]:
    """["hair_color=3", ...] -> {"hair_color": 3}, each name known and each index in range."""
    out: dict[str, int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SampleError(f"--attr {pair}: expected NAME=INDEX, e.g. --attr {names[0]}=0")
        if name not in names:
            raise SampleError(f"--attr {pair}: unknown attribute {name!r}; known: {', '.join(names)}")
        count = counts[names.index(name)]
        if not value.strip().isdigit() or int(value) >= count:
            raise SampleError(f"--attr {pair}: {name} takes a variant index 0..{count - 1}")
        if name in out:
            raise SampleError(f"--attr {name} given twice")
        out[name] = int(value)
    return out


def call_arguments(model_dir: Path, kind: str, args: argparse.Namespace) -> dict:
    """The pipeline call's keyword arguments; only what the user set, so the pipeline's own defaults
    apply to the rest (the grid is then exactly `pipe(**these)`). Checked against the folder's
    configs before anything loads: a bad request fails in a moment."""
    kwargs: dict = {}
    if args.steps is not None:
        kwargs["num_inference_steps"] = args.steps
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    if kind == "cartoon":
        attrs = parse_attributes(args.attr or [], *attribute_layout(model_dir))
        return {"attributes": [attrs] * args.num_images, **kwargs}
    kwargs["batch_size"] = args.num_images
    if kind in ("dreambooth", "lora"):
        _check_subject_options(has_identifier(model_dir, kind), args)
        if args.target == "class":
            kwargs["subject"] = False
    return kwargs


def _check_subject_options(identifier: bool, args: argparse.Namespace) -> None:
    if not identifier and (args.target == "class" or args.guidance_scale is not None):
        flag = "--class" if args.target == "class" else "--guidance-scale"
        raise SampleError(
            f"{flag}: {args.model_dir} was trained without an identifier (one model, the subject "
            "only); --class and --guidance-scale need train_dreambooth.identifier: true"
        )
    if args.target == "class" and args.guidance_scale is not None:
        raise SampleError("--guidance-scale guides from the class towards the subject: it does not apply to --class")


# ------------------------------------------------------------------------------------ the grid


def grid(images: list[Image.Image]) -> Image.Image:
    """A near-square grid (diffusers' make_image_grid), empty cells white."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    blank = Image.new("RGB", images[0].size, (255, 255, 255))
    return make_image_grid(list(images) + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)


def sample(args: argparse.Namespace) -> tuple[Image.Image, str]:
    """(grid, kind) for parsed arguments."""
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise SampleError(f"{model_dir}: no such folder")
    kind = model_kind(model_dir)
    check_options(args, kind)
    kwargs = call_arguments(model_dir, kind, args)
    device = _device(args.device)
    pipe = load(model_dir, kind, args.base_dir)
    if args.scheduler is not None:
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    if device != "cpu":  # loaded on the CPU; a no-op .to() would only print diffusers' dtype warning
        pipe.to(device)
    # A CPU generator on every device: the same noise as the README's `torch.Generator().manual_seed(seed)`.
    images = pipe(**kwargs, generator=torch.Generator().manual_seed(args.seed)).images
    return grid(images), kind


def _device(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SampleError("--device cuda: torch sees no CUDA device here (use --device cpu or auto)")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.sample",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", help="a saved model folder: models/cartoon, models/ldm, models/dreambooth, ...")
    p.add_argument("--num-images", type=int, required=True, help="images in the grid (one pipeline call)")
    p.add_argument("--seed", type=int, default=0, help="seeds the call's CPU generator (default 0)")
    p.add_argument("--out", required=True, help="the grid's PNG path")
    p.add_argument("--steps", type=int, help="num_inference_steps (default: the pipeline's)")
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="sampler (default: the one saved with the model)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when present")
    p.add_argument("--attr", action="append", metavar="NAME=INDEX", help="cartoon: fix an attribute (repeatable)")
    p.add_argument(
        "--guidance-scale", type=float, help="cartoon: classifier-free guidance; dreambooth: identifier guidance"
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--subject", dest="target", action="store_const", const="subject", help="dreambooth: the subject (default)"
    )
    target.add_argument(
        "--class",
        dest="target",
        action="store_const",
        const="class",
        help="dreambooth with an identifier: the general class",
    )
    p.add_argument("--base-dir", help="lora adapter: its base model folder (default: the path it recorded)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        image, kind = sample(args)
    except (SampleError, ValueError, FileNotFoundError) as exc:  # bad requests, not bugs: one line, no traceback
        print(f"pipelines.sample: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"pipelines.sample: {args.num_images} images of {args.model_dir} ({kind}), seed {args.seed} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

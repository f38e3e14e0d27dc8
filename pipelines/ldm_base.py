"""A latent diffusion base model from a folder in either of two layouts, as a `LatentDiffusionPipeline`.

- this project's (train_ldm's output, `models/ldm`): model_index.json names `LatentDiffusionPipeline`,
  with `unet/`, `vae/` (AutoencoderKL, VQModel or the project's PatchAutoencoderKL) and `scheduler/`;
- diffusers' `LDMPipeline` (a snapshot of `CompVis/ldm-celebahq-256`): `unet/` (UNet2DModel),
  `vqvae/` (VQModel) and `scheduler/`.

Both sample the same way. `LDMPipeline.__call__` draws z_T ~ N(0, I) of the UNet's shape, multiplies
by `init_noise_sigma`, denoises with its scheduler (eta 0), divides by `vqvae.config.scaling_factor`
and calls `vqvae.decode` (which quantises); `LatentDiffusionPipeline` does each of those steps, so
the VQModel becomes its `vae` and the latents mean the same: the UNet sees `encoder output *
scaling_factor`. For the same noise, scheduler and steps the two give the same images
(tests/training/test_dreambooth_pretrained_base.py). Components are loaded by their classes; no code is run
from the folder.

A hub id is not loaded here: a DVC dep must be a folder, so a hub model is downloaded once
(`huggingface-cli download <id> --local-dir models/pretrained/<name>`) and named by that folder.

Inference only, importable alone: nothing here imports `tasks` or `flows`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipelines.latent import LatentDiffusionPipeline

EXAMPLE_HUB_ID = "CompVis/ldm-celebahq-256"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAYOUTS = {"project": "vae", "ldm": "vqvae"}  # layout -> the autoencoder's subfolder


def download_help(name: str | Path) -> str:
    """The command that turns a hub model into a folder a DVC dep (and this module) can use."""
    text = str(name)
    hub = text if HUB_ID.match(text) and not Path(text.split("/")[0]).is_dir() else EXAMPLE_HUB_ID
    local = f"models/pretrained/{hub.split('/')[-1]}"
    return (
        f"download a snapshot with `huggingface-cli download {hub} --local-dir {local}` and set "
        f"`dreambooth_base: {local}` in params.yaml"
    )


def base_layout(folder: str | Path) -> str:
    """`project` or `ldm` (see the module docstring); a clear one-line error for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"base model {str(folder)!r} is not a folder (a hub id cannot be a DVC dependency): "
            f"{download_help(folder)}; this project's own base (models/ldm) is made by "
            f"the train_ldm stage"
        )
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no latent diffusion pipeline (model_index.json missing): run the "
            f"train_ldm stage first, or {download_help(folder)}"
        )
    index = json.loads(index_path.read_text())
    for layout, vae in LAYOUTS.items():
        if "unet" in index and vae in index and "scheduler" in index:
            return layout
    raise ValueError(
        f"{folder} is a {index.get('_class_name')} with components "
        f"{sorted(k for k in index if not k.startswith('_'))}; a base model needs unet, scheduler and "
        f"vae (this project's LatentDiffusionPipeline) or vqvae (diffusers' LDMPipeline)"
    )


def vae_folder(folder: str | Path) -> Path:
    """The base model's autoencoder folder (`vae/` or `vqvae/`)."""
    return Path(folder) / LAYOUTS[base_layout(folder)]


def load_latent_base(folder: str | Path) -> LatentDiffusionPipeline:
    """The base model in `folder` (either layout) as a `LatentDiffusionPipeline` on the CPU."""
    layout = base_layout(folder)
    if layout == "project":
        return LatentDiffusionPipeline.from_pretrained(str(folder))
    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text())
    parts = {}
    for name, expected in (("unet", ("UNet2DModel",)), ("vqvae", ("VQModel", "AutoencoderKL")), ("scheduler", None)):
        library, class_name = index[name]
        if library != "diffusers" or not hasattr(diffusers, class_name) or (expected and class_name not in expected):
            raise ValueError(
                f"{folder}: component {name} is {library}.{class_name}; an LDMPipeline base needs "
                f"diffusers' {' or '.join(expected or ('schedulers',))}"
            )
        parts[name] = getattr(diffusers, class_name).from_pretrained(str(folder), subfolder=name)
    return LatentDiffusionPipeline(unet=parts["unet"], vae=parts["vqvae"], scheduler=parts["scheduler"])

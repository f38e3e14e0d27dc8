"""Faces for the evaluation tests: photos that packages ship (dlib finds their faces), folders of them
in align_faces' format, and the tiny base and subject models evaluate_faces samples from."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.shards.dataset import AtomicShardWriter, write_manifest
from tests.helpers.latents import save_tiny_vae
from tests.helpers.models import tiny_unet

# evaluate_faces' params at their smallest (tiny sample counts, 1 worker).
EVALUATE_FACES_PARAMS = {
    "real_splits": ["val"],
    "num_samples": 4,
    "batch_size": 2,
    "scheduler": "ddim",
    "num_inference_steps": 2,
    "seed": 0,
    "subject": "auto",
    "subject_guidance_scale": 2.0,
    "grid_images": 4,
    "k_nearest": 1,
    "min_detect_ratio": 0.7,
    "features": {
        "upscale_to": 256,
        "upsample": 1,
        "chip_size": 150,
        "chip_padding": 0.25,
        "num_jitters": 0,
        "workers": 1,
    },
    "kid": {"num_subsets": 3, "subset_size": 4, "seed": 0},
}


def package_photos(size: int = 64) -> list[np.ndarray]:
    """12 faces from the photos packages ship: astronaut and Grace Hopper, three crops, mirrored."""
    import matplotlib.cbook
    import skimage.data

    out = []
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as hopper:
        for im in (Image.fromarray(skimage.data.astronaut()), hopper.convert("RGB")):
            w, h = im.size
            for box in [(0, 0, w, h), (40, 0, w - 40, h - 80), (20, 20, w - 60, h - 60)]:
                crop = im.crop(box)
                for mirrored in (crop, crop.transpose(Image.FLIP_LEFT_RIGHT)):
                    out.append(np.asarray(mirrored.resize((size, size), Image.LANCZOS)))
    return out


def write_faces(out_dir, splits: dict[str, list[np.ndarray]]):
    """`splits` (split: images) as align_faces' output: PNG shards and a manifest."""
    manifest = {}
    for split, images in splits.items():
        with AtomicShardWriter(out_dir, split, max_count=len(images)) as w:
            for i, im in enumerate(images):
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="PNG")
                w.write({"__key__": f"{split}{i:04d}", "png": buf.getvalue(), "json": {}})
        manifest[split] = {"count": len(images), "shards": w.shards}
    write_manifest(
        out_dir, {"kind": "faces_aligned", "counts": {s: v["count"] for s, v in manifest.items()}, "splits": manifest}
    )
    return str(out_dir)


def save_face_models(root: Path) -> None:
    """root/vae (the tiny f=2 VAE at 64 px: 32x32 latents), root/ldm (a random LatentDiffusionPipeline)
    and root/db (a SubjectDiffusionPipeline with an identifier, started from the saved base as
    train_dreambooth's is)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from pipelines import LatentDiffusionPipeline
    from pipelines.dreambooth import SubjectDiffusionPipeline, with_identifier
    from tasks.latent.vae import load_vae

    vae = load_vae(save_tiny_vae(root / "vae", seed=0, resolution=64))
    unet = tiny_unet(channels=4, sample_size=32, seed=0)
    scheduler = DDPMScheduler(num_train_timesteps=100)
    LatentDiffusionPipeline(unet=unet, vae=vae, scheduler=scheduler).save_pretrained(root / "ldm")
    saved = UNet2DModel.from_pretrained(root / "ldm", subfolder="unet")
    SubjectDiffusionPipeline(unet=with_identifier(saved), vae=vae, scheduler=scheduler).save_pretrained(root / "db")

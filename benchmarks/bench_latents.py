"""Latent caching figures: encoding throughput, shard sizes, cached vs online-VAE training throughput.

    .venv/bin/python -m benchmarks.bench_latents [--aligned-dir data/faces/aligned] [--vae-dir models/vae]
                                                 [--steps 10] [--threads 0]

1. encode_latents over the aligned shards: images/s, and the bytes of the latent shards against
   the aligned PNG shards they came from.
2. Training throughput of the same UNet (params.yaml's train_ldm.model) at the same batch size,
   (a) on cached latents (the latent loader: z = mean + std * eps), against (b) what one does
   without this stage: decode each PNG, resize, and encode through the VAE at every step. Printed
   as samples/s each and their ratio, measured in one run.

Without --vae-dir (or when models/vae is missing) a VAE of train_vae's model params is built with
random weights: throughput does not depend on the weights. Without aligned shards, synthetic
aligned-face-like shards are drawn.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _dir_bytes(folder: Path, names: list[str]) -> int:
    return sum((folder / n).stat().st_size for n in names)


def _tiny_vae(tmp: Path, params: dict) -> Path:
    from tasks.latent.train_vae import build_vae

    torch.manual_seed(0)
    vae = build_vae(params["train_vae"]["model"], params["train_vae"]["resolution"])
    vae.save_pretrained(tmp / "vae")
    return tmp / "vae"


def _train_steps(unet, batches, steps: int, seed: int) -> float:
    """Seconds for `steps` plain diffusion training steps on batches from `batches()` (x0 producer)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    it = batches()
    x0 = next(it)  # warm-up step (allocator, first-call overheads) is not timed
    t0 = None
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        if step > 0:
            x0 = next(it)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        loss = F.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aligned-dir", default="data/faces/aligned")
    parser.add_argument("--vae-dir", default="models/vae")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train_ldm.data.batch_size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tasks.config.params import load_params
    from tasks.latent.config import LdmModelConfig
    from tasks.latent.encode import encode_latents
    from tasks.latent.images import decode_png, iter_shard, to_model_input
    from tasks.latent.loader import latent_loader
    from tasks.latent.train import build_unet
    from tasks.latent.vae import load_vae, posterior_moments
    from tasks.shards.dataset import read_manifest, shard_paths

    params = load_params()
    tmp = Path(tempfile.mkdtemp(prefix="bench_latents_"))
    aligned = Path(args.aligned_dir)
    if not (aligned / "manifest.json").is_file():
        from tests.helpers.latents import make_aligned

        aligned = make_aligned(tmp / "aligned", n=256, size=256, shard_size=64)
        print(f"no aligned shards at {args.aligned_dir}: drew 256 synthetic 256x256 faces")
    vae_dir = Path(args.vae_dir)
    if not (vae_dir / "config.json").is_file():
        vae_dir = _tiny_vae(tmp, params)
        print(f"no VAE at {args.vae_dir}: a randomly initialised VAE of train_vae.model")
    print(f"torch threads: {torch.get_num_threads()} (timings depend on what else runs on the machine)")

    # ---------------------------------------------------------------- 1. encoding
    out = tmp / "latents"
    t0 = time.perf_counter()
    manifest = encode_latents(
        str(aligned),
        str(vae_dir),
        str(out),
        **{**params["encode_latents"], "flip": False, "device": "cpu", "num_processes": 1},
        progress=False,
        log=lambda *_: None,
    )
    seconds = time.perf_counter() - t0
    n = manifest["counts"]["images"]
    a_man = read_manifest(aligned)
    a_names = [s for sp in a_man["splits"].values() for s in sp["shards"]]
    png_bytes, lat_bytes = _dir_bytes(aligned, a_names), _dir_bytes(out, manifest["all_shards"])
    print(
        f"encode: {n} images at {manifest['image_resolution']}px -> latents {manifest['latent_shape']} in "
        f"{seconds:.1f} s = {n / seconds:.1f} images/s (stage wall time incl. loading the VAE; encoder-only "
        f"{manifest['throughput_images_per_second']:.1f} images/s)"
    )
    print(
        f"shards: aligned PNG {png_bytes / 2**20:.2f} MiB ({png_bytes / n / 1024:.1f} KiB/image), latents "
        f"{lat_bytes / 2**20:.2f} MiB ({lat_bytes / n / 1024:.1f} KiB/image): {png_bytes / lat_bytes:.1f}x smaller "
        "(float16 mean + std, no flips)"
    )

    # ---------------------------------------------------------------- 2. training: cached vs online VAE
    vae = load_vae(vae_dir)
    scale = float(vae.config.scaling_factor)
    bs = args.batch_size or params["train_ldm"]["data"]["batch_size"]
    model = LdmModelConfig.from_params(params["train_ldm"]["model"], "train_ldm.model")
    res = manifest["image_resolution"]

    def cached():
        while True:
            for batch in latent_loader(out, "train", batch_size=bs, seed=0):
                yield batch["latent"] * scale

    def online():
        g = torch.Generator().manual_seed(0)
        while True:
            images = []
            for path in shard_paths(aligned, "train"):
                for _, png in iter_shard(path):
                    images.append(decode_png(png, res))
                    if len(images) == bs:
                        with torch.no_grad():
                            mean, std = posterior_moments(vae, to_model_input(np.stack(images)))
                        yield (mean + std * torch.randn(mean.shape, generator=g)) * scale
                        images = []

    results = {}
    for name, producer in (("cached latents", cached), ("VAE every step", online)):
        torch.manual_seed(0)
        unet = build_unet(model, manifest["latent_shape"])
        secs = _train_steps(unet, producer, args.steps, seed=0)
        results[name] = args.steps * bs / secs
        print(f"train ({name}): {args.steps} steps of {bs} in {secs:.1f} s = {results[name]:.1f} samples/s")
    ratio = results["cached latents"] / results["VAE every step"]
    print(
        f"cached / online throughput: {ratio:.2f}x (same UNet {tuple(model['block_out_channels'])}, batch {bs}, "
        f"latents {manifest['latent_shape']})"
    )


if __name__ == "__main__":
    main()

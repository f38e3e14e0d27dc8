"""DreamBooth speed: fine-tuning on cached latents against the usual way, and class sampling.

    .venv/bin/python -m benchmarks.bench_dreambooth [--base-dir models/ldm] [--subject-dir data/faces/subject]
        [--subject-latents data/faces/subject_latents] [--class-latents data/faces/class_latents]
        [--steps 10] [--sample-count 16] [--threads 0]

1. Fine-tuning optimizer steps/s of the same UNet (the base, with the identifier) on the same
   [instance; class] batch sizes (params.yaml's train_dreambooth), measured in one run:
   (a) cached: subject and class latents from their shards (z = mean + std * eps), as train_dreambooth;
   (b) usual (diffusers' train_dreambooth.py): class images decoded to PNG files once, and at every
       step every subject photo and class image read from disk and encoded through the VAE.
   Printed as steps/s each and the ratio (a)/(b).
2. Class sampling: latents/s of sample_class's sampler (params.yaml's sample_class), and the
   images/s the usual way adds by decoding them to files.

Needs the repo's outputs (`dvc repro sample_class encode_subject` first).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _params() -> dict:
    import yaml

    return yaml.safe_load(Path("params.yaml").read_text())


def _step(
    unet,
    optimizer,
    scheduler,
    z: torch.Tensor,
    labels: torch.Tensor,
    n_instance: int,
    weight: float,
    gen: torch.Generator,
) -> None:
    """One optimizer step of train_dreambooth's loss on scaled latents z."""
    from tasks.dreambooth.train import prior_loss

    noise = torch.randn(z.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z.shape[0],), generator=gen)
    pred = unet(scheduler.add_noise(z, noise, t), t, class_labels=labels).sample
    loss, _ = prior_loss(pred, noise, n_instance, weight)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _timed(fn, steps: int) -> float:
    fn()  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-dir", default="models/ldm")
    ap.add_argument("--subject-dir", default="data/faces/subject")
    ap.add_argument("--subject-latents", default="data/faces/subject_latents")
    ap.add_argument("--class-latents", default="data/faces/class_latents")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sample-count", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pipelines.dreambooth import with_identifier
    from tasks.dreambooth.base import load_base
    from tasks.dreambooth.class_samples import sample_latents
    from tasks.dreambooth.config import SampleClassConfig, TrainDreamboothConfig
    from tasks.dreambooth.train import LatentSet, epoch_batches
    from tasks.latent.images import decode_png, iter_shard, to_model_input
    from tasks.shards.dataset import shard_paths

    params = _params()
    cfg = TrainDreamboothConfig.from_params(params["train_dreambooth"], "train_dreambooth")
    ib, cb = cfg.instance_batch_size, cfg.class_batch_size
    base = load_base(args.base_dir)
    vae, scheduler = base.vae, base.scheduler
    scale = float(vae.config.scaling_factor)
    resolution = int(vae.config.sample_size)
    torch.manual_seed(0)
    unet = with_identifier(base.unet).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * ib + [0] * cb)
    print(
        f"UNet {sum(p.numel() for p in unet.parameters()):,} parameters; batch {ib} subject + {cb} class; "
        f"latents {list(base.latent_shape)}, images {resolution} px; torch threads {torch.get_num_threads()}"
    )

    # ---- (a) cached latents
    subject, klass = LatentSet(args.subject_latents), LatentSet(args.class_latents)
    batches = iter([])
    epoch = 0

    def cached_step():
        nonlocal batches, epoch
        batch = next(batches, None)
        if batch is None:
            batches, epoch = iter(epoch_batches(subject, klass, cfg, 0, epoch, 0)), epoch + 1
            batch = next(batches)
        _step(unet, optimizer, scheduler, batch["latent"] * scale, labels, ib, cfg.prior_loss_weight, gen)

    cached = _timed(cached_step, args.steps)

    # ---- (b) the usual way: class images as files, everything through the VAE every step
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        class_files = []
        with torch.no_grad():
            for i in range(0, len(klass), 16):
                z = torch.from_numpy(klass.mean[i : i + 16]) * scale
                images = ((base.decode_latents(z).clamp(-1, 1) + 1) * 127.5).round().byte()
                for j, im in enumerate(images.permute(0, 2, 3, 1).numpy()):
                    path = Path(tmp) / f"class-{i + j:05d}.png"
                    Image.fromarray(im).save(path)
                    class_files.append(path)
        decode_rate = len(class_files) / (time.perf_counter() - t0)
        photo_pngs = [png for shard in shard_paths(args.subject_dir, "train") for _, png in iter_shard(shard)]
        rng = np.random.default_rng(0)

        def usual_step():
            inst = [decode_png(photo_pngs[k], resolution) for k in rng.choice(len(photo_pngs), ib)]
            cls = [np.asarray(Image.open(class_files[k]).convert("RGB")) for k in rng.choice(len(class_files), cb)]
            x = to_model_input(np.stack(inst + cls))
            with torch.no_grad():
                z = vae.encode(x).latent_dist.sample(generator=gen) * scale
            _step(unet, optimizer, scheduler, z, labels, ib, cfg.prior_loss_weight, gen)

        usual = _timed(usual_step, args.steps)
    print(
        f"fine-tuning: cached latents {cached:.2f} steps/s; usual (files + VAE every step) {usual:.2f} steps/s; "
        f"ratio {cached / usual:.2f}x"
    )

    # ---- class sampling
    sc = SampleClassConfig.from_params(
        {**params["sample_class"], "num_class_samples": args.sample_count, "device": "cpu"}, "sample_class"
    )
    from pipelines import make_scheduler

    base.scheduler = make_scheduler(sc.scheduler, base.scheduler.config)
    t0 = time.perf_counter()
    sample_latents(base, args.sample_count, 0, sc, torch.device("cpu"))
    rate = args.sample_count / (time.perf_counter() - t0)
    print(
        f"class sampling ({sc.scheduler}, {sc.num_inference_steps} steps, batch {sc.batch_size}): "
        f"{rate:.2f} latents/s; decoding them to image files as the usual way does: {decode_rate:.1f} images/s"
    )


if __name__ == "__main__":
    main()

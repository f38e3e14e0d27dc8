"""Training throughput: the shared engine (tasks/training) against a plain diffusers-style loop.

The plain loop is written the way diffusers' `examples/unconditional_image_generation/
train_unconditional.py` writes it: accelerator.prepare(model, optimizer, dataloader, lr_scheduler),
noise and timesteps per batch, `accelerator.accumulate`, clip, step, EMAModel, a tqdm bar with the
loss read with `.item()` every step. Both train the same UNet2DModel on the same in-memory batches (no
decoding cost), same batch size, same process. The engine runs with the embedded default's
`train_ldm.training` (Min-SNR loss, EMA, dvclive every `log_every_steps`), the plain loop as the
diffusers example (plain MSE, EMA, the loss on the host every step).

Models (`--model`):
  ldm    the embedded default's train_ldm UNet (params.yaml `train_ldm.model`, built by the stage's own
         `build_unet`) on 4x16x16 latents, at `train_ldm.data.batch_size`: the default
  pixel  UNet2DModel (32, 64, 64) on 3x`--resolution`^2 images

Steady-state time per step is taken from a step past warm-up to the step before the last (the engine's
final checkpoint is not counted; its periodic ones would be), each method run `--repeats` times,
alternating which goes first; the best runs are compared (the least disturbed by other load), and the
paired ratios are printed too. A ratio engine / plain below 1 means the engine is faster.

    python -m benchmarks.bench_train [--model ldm|pixel] [--steps 24] [--batch-size N] [--resolution 32] [--repeats 4]
                                     [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F


def pixel_model(resolution: int):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
    )


def ldm_model():
    """The embedded default's train_ldm UNet, as the stage builds it, and its latent shape (train_vae's
    f=`patch_size` latents of `resolution` px faces)."""
    from tasks.config.params import stage_params
    from tasks.latent.config import LdmModelConfig
    from tasks.latent.train import build_unet

    vae = stage_params("train_vae")
    shape = [vae["model"]["latent_channels"], *[vae["resolution"] // vae["model"]["patch_size"]] * 2]
    config = LdmModelConfig.from_params(stage_params("train_ldm")["model"], "train_ldm.model")
    return (lambda: build_unet(config, shape)), shape


def make_data(n: int, shape: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, *shape, generator=g) * 2 - 1


def plain_loop(build, data: torch.Tensor, steps: int, batch_size: int, warmup: int) -> float:
    """samples/s of a train_unconditional.py-style loop."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    torch.manual_seed(0)
    accelerator = Accelerator(mixed_precision="no", gradient_accumulation_steps=1)
    model = build()
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data), batch_size=batch_size, shuffle=True, drop_last=True
    )
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=5, num_training_steps=steps)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema_model = EMAModel(
        model.parameters(),
        decay=0.995,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=3 / 4,
        model_cls=type(accelerator.unwrap_model(model)),
        model_config=accelerator.unwrap_model(model).config,
    )
    global_step, stamps = 0, {}
    progress_bar = tqdm(total=steps, desc="plain", disable=True)
    while global_step < steps:
        model.train()
        for (clean_images,) in loader:
            noise = torch.randn(clean_images.shape, dtype=clean_images.dtype, device=clean_images.device)
            bsz = clean_images.shape[0]
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (bsz,), device=clean_images.device
            ).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            with accelerator.accumulate(model):
                model_output = model(noisy_images, timesteps).sample
                loss = F.mse_loss(model_output.float(), noise.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema_model.step(model.parameters())
                progress_bar.update(1)
                global_step += 1
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "step": global_step}
            progress_bar.set_postfix(**logs)
            stamps[global_step] = time.perf_counter()
            if global_step >= steps:
                break
    return (steps - 1 - warmup) * batch_size / (stamps[steps - 1] - stamps[warmup])


def engine_loop(build, data: torch.Tensor, steps: int, batch_size: int, warmup: int) -> float:
    """samples/s of tasks.training.train on the same model and batches."""
    from tasks.config.params import stage_params
    from tasks.training.config import TrainConfig
    from tasks.training.diffusion import DiffusionSpec
    from tasks.training.engine import train

    n_batches = len(data) // batch_size

    def make_loader(epoch, rank, world):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
        return (data[order[i * batch_size : (i + 1) * batch_size]] for i in range(n_batches))

    spec = DiffusionSpec(
        build_model=build,
        make_loader=make_loader,
        batches_per_epoch=n_batches,
        prepare_batch=lambda b, d: (b.to(d), None),
        predict=lambda m, x, t, c: m(x, t).sample,
        save=lambda net, sched, out: None,
    )
    cfg = TrainConfig.from_params(
        {
            **stage_params("train_ldm")["training"],
            "seed": 0,
            "num_epochs": steps // n_batches + 1,
            "max_train_steps": steps,
            "learning_rate": 1e-3,
            "lr_warmup_steps": 5,
            "ema_decay": 0.995,
            "checkpointing_steps": 10_000,
            "samples_every_epochs": 0,
        }
    )
    stamps = {}
    with tempfile.TemporaryDirectory() as tmp:
        train(
            spec,
            cfg,
            model_dir=f"{tmp}/model",
            checkpoint_dir=f"{tmp}/ckpt",
            live_dir=f"{tmp}/live",
            run_id="bench",
            step_callback=lambda s: stamps.__setitem__(s, time.perf_counter()),
            show_progress=False,
        )
    return (steps - 1 - warmup) * batch_size / (stamps[steps - 1] - stamps[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("ldm", "pixel"), default="ldm")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: train_ldm.data.batch_size (ldm), 32 (pixel)"
    )
    parser.add_argument("--resolution", type=int, default=32, help="pixel only")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's); 1 is the least disturbed on a shared machine",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "ldm":
        from tasks.config.params import stage_params

        build, shape = ldm_model()
        batch_size = args.batch_size or stage_params("train_ldm")["data"]["batch_size"]
        what = f"the embedded default's train_ldm UNet on {'x'.join(map(str, shape))} latents"
    else:
        shape = [3, args.resolution, args.resolution]
        build, batch_size = (lambda: pixel_model(args.resolution)), args.batch_size or 32
        what = f"UNet2DModel (32, 64, 64) at {args.resolution}x{args.resolution}"
    data = make_data(batch_size * 8, shape)
    plain, engine = [], []
    for r in range(args.repeats):  # alternate which goes first: load drifts on a shared machine
        order = [("plain", plain_loop), ("engine", engine_loop)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            (plain if name == "plain" else engine).append(fn(build, data, args.steps, batch_size, args.warmup))
    ms = lambda samples_per_s: 1000 * batch_size / samples_per_s  # noqa: E731
    print(f"model: {what}, batch {batch_size}, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(
        f"plain loop (train_unconditional.py style): {ms(max(plain)):.1f} ms/step ({max(plain):.1f} samples/s)  "
        "runs: " + ", ".join(f"{ms(p):.1f}" for p in plain)
    )
    print(
        f"engine (tasks/training):                  {ms(max(engine)):.1f} ms/step ({max(engine):.1f} samples/s)  "
        "runs: " + ", ".join(f"{ms(e):.1f}" for e in engine)
    )
    paired = sorted(p / e for e, p in zip(engine, plain))  # engine ms / plain ms = plain samples/s / engine's
    print(
        f"time per step, engine / plain: {max(plain) / max(engine):.3f} (best runs); paired runs: "
        + ", ".join(f"{x:.3f}" for x in paired)
        + f"; median {paired[len(paired) // 2]:.3f}"
    )


if __name__ == "__main__":
    main()

"""Training throughput: the shared engine (tasks/training) against a plain diffusers-style loop.

The plain loop is written the way diffusers' `examples/unconditional_image_generation/
train_unconditional.py` writes it: accelerator.prepare(model, optimizer, dataloader, lr_scheduler),
noise and timesteps per batch, `accelerator.accumulate`, clip, step, EMAModel, a tqdm bar with the
loss. Both train the same tiny UNet2DModel on the same in-memory batches (no decoding cost), same
batch size, same process. Steady-state samples/s are timed from a step past warm-up to the step
before the last (the engine's final checkpoint is not counted; its periodic ones would be), each
method run `--repeats` times, alternating which goes first; the best runs are compared (the least
disturbed by other load), and the paired ratios are printed too.

    python -m benchmarks.bench_train [--steps 24] [--batch-size 32] [--resolution 32] [--repeats 4]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F


def make_model(resolution: int):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=resolution, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, layers_per_block=1,
                       norm_num_groups=8)


def make_data(n: int, resolution: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1


def plain_loop(data: torch.Tensor, steps: int, batch_size: int, warmup: int) -> float:
    """samples/s of a train_unconditional.py-style loop."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    torch.manual_seed(0)
    accelerator = Accelerator(mixed_precision="no", gradient_accumulation_steps=1)
    model = make_model(data.shape[-1])
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=batch_size, shuffle=True,
                                         drop_last=True)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=5, num_training_steps=steps)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema_model = EMAModel(model.parameters(), decay=0.995, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                         model_cls=type(accelerator.unwrap_model(model)),
                         model_config=accelerator.unwrap_model(model).config)
    global_step, stamps = 0, {}
    progress_bar = tqdm(total=steps, desc="plain", disable=True)
    while global_step < steps:
        model.train()
        for (clean_images,) in loader:
            noise = torch.randn(clean_images.shape, dtype=clean_images.dtype, device=clean_images.device)
            bsz = clean_images.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,),
                                      device=clean_images.device).long()
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


def engine_loop(data: torch.Tensor, steps: int, batch_size: int, warmup: int) -> float:
    """samples/s of tasks.training.train on the same model and batches."""
    from tasks.common.params import stage_params
    from tasks.training.config import TrainConfig
    from tasks.training.engine import TrainSpec, train

    n_batches = len(data) // batch_size

    def make_loader(epoch, rank, world):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
        return (data[order[i * batch_size:(i + 1) * batch_size]] for i in range(n_batches))

    spec = TrainSpec(build_model=lambda: make_model(data.shape[-1]), make_loader=make_loader,
                     batches_per_epoch=n_batches, prepare_batch=lambda b, d: (b.to(d), None),
                     predict=lambda m, x, t, c: m(x, t).sample, save=lambda net, sched, out: None)
    cfg = TrainConfig.from_params({**stage_params("train_ldm")["training"], "seed": 0,
                                   "num_epochs": steps // n_batches + 1, "max_train_steps": steps,
                                   "learning_rate": 1e-3, "lr_warmup_steps": 5, "ema_decay": 0.995,
                                   "checkpointing_steps": 10_000, "samples_every_epochs": 0})
    stamps = {}
    with tempfile.TemporaryDirectory() as tmp:
        train(spec, cfg, model_dir=f"{tmp}/model", checkpoint_dir=f"{tmp}/ckpt", live_dir=f"{tmp}/live",
              run_id="bench", step_callback=lambda s: stamps.__setitem__(s, time.perf_counter()),
              show_progress=False)
    return (steps - 1 - warmup) * batch_size / (stamps[steps - 1] - stamps[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    data = make_data(args.batch_size * 8, args.resolution)
    plain, engine = [], []
    for r in range(args.repeats):  # alternate which goes first: load drifts on a shared machine
        order = [("plain", plain_loop), ("engine", engine_loop)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            (plain if name == "plain" else engine).append(fn(data, args.steps, args.batch_size, args.warmup))
    print(f"model: UNet2DModel (32, 64, 64) at {args.resolution}x{args.resolution}, batch {args.batch_size}, "
          f"{args.steps} steps, torch threads {torch.get_num_threads()}")
    print(f"plain loop (train_unconditional.py style): {max(plain):.1f} samples/s  runs: "
          + ", ".join(f"{p:.1f}" for p in plain))
    print(f"engine (tasks/training):                  {max(engine):.1f} samples/s  runs: "
          + ", ".join(f"{e:.1f}" for e in engine))
    paired = sorted(e / p for e, p in zip(engine, plain))
    print(f"ratio engine / plain: {max(engine) / max(plain):.3f} (best runs); paired runs: "
          + ", ".join(f"{x:.3f}" for x in paired) + f"; median {paired[len(paired) // 2]:.3f}")


if __name__ == "__main__":
    main()

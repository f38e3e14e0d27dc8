"""The scale profiles trained by the project's own engine and stage code (not a synthetic loop):
steady-state samples/s, peak memory and model FLOPs utilisation, for a GPU worker.

    python -m benchmarks.bench_gpu_engine [--steps 300] [--only cartoon|ldm] [--device cuda] [--small]
                                          [--cartoon-images 4096] [--shards DIR] [--out results.json]

- cartoon: configs/cartoon_seed.yaml merged into params.yaml's train_cartoon (117M-parameter UNet + Tau,
  64 px, batch 64) through `tasks.cartoon.train.run_training`: the loader, EMA, dvclive, checkpoints,
  accelerate. Its data: `--cartoon-images` avatars drawn by fetch_cartoons' synthetic renderer and
  written by preprocess_cartoons (params.yaml's settings) into a temporary folder, or `--shards`.
- ldm: configs/ffhq256_ldm.yaml merged into train_ldm (the 258M-parameter UNet on 32x32x4 latents, batch
  84) through `tasks.latent.train.run_training`, on random latents in encode_latents' shard format beside
  an SD-config `AutoencoderKL` with random weights (nothing is downloaded; a step's cost does not depend
  on the weights).

bf16 on CUDA (`training.mixed_precision`), float32 on CPU. No sample grids; the only checkpoint is the
final one. Steady state: the steps after the first `--warmup` (allocator, cuDNN autotune), timed between
step callbacks, the last step (its callback runs after the final checkpoint) left out. Peak memory: the
training's, reset before it. FLOPs per step: torch's FlopCounterMode over one forward + backward of the
stage's own model (its spec's build_model) on one batch of its own loader. MFU = FLOPs per step / step
time / `--peak-tflops` (default 989: H100/H200 SXM dense bf16). `--small` shrinks both models and batches
so the script can be checked on a CPU in seconds (`--device cpu --small --steps 4`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"cartoon": "cartoon_seed.yaml", "ldm": "ffhq256_ldm.yaml"}


def profile_params(stage: str, profile: str, over: dict) -> dict:
    """params.yaml's section, the profile merged in (as `tasks.config.params apply`), then `over`."""
    from tasks.config.params import _merge_into, stage_params

    params = copy.deepcopy(stage_params(stage, ROOT / "params.yaml"))
    _merge_into(params, yaml.safe_load((ROOT / "configs" / profile).read_text())[stage])
    _merge_into(params, over)
    return params


def engine_overrides(steps: int, device: str, small: bool, workers: int) -> dict:
    over = {
        "training": {
            "max_train_steps": steps,
            "num_epochs": 10_000,
            "checkpointing_steps": 10**9,
            "samples_every_epochs": 0,
            "mixed_precision": "bf16" if device == "cuda" else "no",
        },
        "data": {"workers": workers},
    }
    if small:
        over["model"] = {"block_out_channels": [32, 32, 64], "norm_num_groups": 8, "attention_head_dim": 8}
        over["data"]["batch_size"] = 8
    return over


def fake_cartoons(out: Path, n: int) -> Path:
    """`n` avatars by fetch_cartoons' renderer, through preprocess_cartoons: the stage's shards."""
    from tasks.cartoon.fetch import render_synthetic
    from tasks.cartoon.preprocess import preprocess_cartoons
    from tasks.config.params import stage_params

    render_synthetic(str(out / "raw"), n, seed=0, workers=0)
    settings = stage_params("preprocess_cartoons", ROOT / "params.yaml")
    preprocess_cartoons(str(out / "raw"), str(out / "shards"), **settings)
    return out / "shards"


def fake_latents(out: Path, n: int, small: bool) -> tuple[Path, Path]:
    """An SD-config VAE folder (random weights) and `n` random latents in encode_latents' format
    (as tests/helpers/dreambooth.py's make_latents, at 4x32x32 and 1000 per shard)."""
    from diffusers import AutoencoderKL

    from benchmarks.bench_scale import SD_VAE
    from tasks.latent.vae import vae_identity
    from tasks.shards.dataset import AtomicShardWriter, shard_name, write_manifest

    cfg = {**SD_VAE, "block_out_channels": [32, 32, 32, 32]} if small else SD_VAE
    vae = AutoencoderKL(**cfg, scaling_factor=0.18215)
    vae.save_pretrained(out / "vae")
    rng, per_shard = np.random.default_rng(0), 1000
    with AtomicShardWriter(out / "latents", "train", max_count=per_shard) as w:
        for i in range(n):
            w.write(
                {
                    "__key__": f"f{i:06d}",
                    "mean.npy": rng.standard_normal((4, 32, 32)).astype(np.float16),
                    "std.npy": np.full((4, 32, 32), 0.05, np.float16),
                    "json": {"key": f"f{i:06d}"},
                }
            )
    counts = [min(per_shard, n - start) for start in range(0, n, per_shard)]
    shards = [shard_name("train", s) for s in range(len(counts))]
    write_manifest(
        out / "latents",
        {
            "kind": "faces_latents",
            "vae": {"identity": vae_identity(vae), "scaling_factor": 0.18215},
            "latent_shape": [4, 32, 32],
            "counts": {"images": n, "train": n},
            "splits": {"train": {"count": n, "shards": shards, "shard_counts": counts}},
            "all_shards": shards,
        },
    )
    return out / "vae", out / "latents"


class StepClock:
    """step_callback: wall-clock of the optimizer steps warmup..last-1 (synchronised on CUDA), and
    the peak memory up to step last-1 (the callback of the last step runs after the final checkpoint)."""

    def __init__(self, warmup: int, last: int, device: str):
        self.warmup, self.last, self.device, self.times, self.peak = warmup, last, device, [], None

    def __call__(self, step: int) -> None:
        if self.warmup <= step < self.last:
            if self.device == "cuda":
                torch.cuda.synchronize()
                self.peak = torch.cuda.max_memory_allocated()
            self.times.append(time.perf_counter())

    def step_seconds(self) -> float:
        return (self.times[-1] - self.times[0]) / max(1, len(self.times) - 1)


def step_flops(spec, device: str) -> tuple[float, int]:
    """FLOPs of one forward + backward of the stage's model on one of its batches; its parameters."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_scale import autocast

    model = spec.build_model().to(device)
    x0, cond = spec.prepare_batch(next(iter(spec.make_loader(0, 0, 1))), device)
    t = torch.randint(0, 1000, (x0.shape[0],), device=device)
    with FlopCounterMode(display=False) as counter, autocast(device):
        F.mse_loss(spec.predict(model, torch.randn_like(x0), t, cond).float(), x0).backward()
    return float(counter.get_total_flops()), sum(p.numel() for p in model.parameters())


def run_profile(name: str, args, work: Path) -> dict:
    stage, profile, out = f"train_{name}", PROFILES[name], work / name
    params = profile_params(stage, profile, engine_overrides(args.steps, args.device, args.small, args.workers))
    paths = [str(out / d) for d in ("model", "ckpt", "live")] + [str(out / "metrics.json")]
    if name == "cartoon":
        from tasks.cartoon.config import TrainCartoonConfig as Config
        from tasks.cartoon.train import cartoon_spec as make_spec
        from tasks.cartoon.train import run_training

        data = (args.shards or str(fake_cartoons(out, args.cartoon_images)),)
    else:
        from tasks.latent.config import TrainLdmConfig as Config
        from tasks.latent.train import ldm_spec as make_spec
        from tasks.latent.train import run_training

        vae_dir, latent_dir = fake_latents(out, args.ldm_latents, args.small)
        data = (str(latent_dir), str(vae_dir))
    config = Config.from_params(params, stage)
    cuda, clock = args.device == "cuda", StepClock(args.warmup, args.steps, args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    summary = run_training(*data, *paths, config, step_callback=clock, show_progress=False)
    if cuda:
        torch.cuda.empty_cache()
    flops, n_params = step_flops(make_spec(*data, config), args.device)
    seconds, batch = clock.step_seconds(), params["data"]["batch_size"]
    return {
        "profile": profile,
        "steps": summary["steps"],
        "batch": batch,
        "parameters_M": n_params / 1e6,
        "samples_per_s": batch / seconds,
        "step_ms": seconds * 1e3,
        "engine_samples_per_s": summary["run"]["samples_per_second"],
        **({"peak_memory_GiB": clock.peak / 2**30} if cuda else {}),
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        **({"mfu": flops / seconds / (args.peak_tflops * 1e12)} if cuda else {}),
        "final_loss": summary["final_loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the steady state (<= steps - 2)")
    ap.add_argument("--only", choices=list(PROFILES), default=None)
    ap.add_argument("--cartoon-images", type=int, default=4096, help="avatars drawn for the cartoon run")
    ap.add_argument("--shards", default=None, help="existing cartoon shards instead of drawing them")
    ap.add_argument("--ldm-latents", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    ap.add_argument("--small", action="store_true", help="tiny models and batches: check the script on a CPU")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.steps < 3:
        ap.error("--steps must be at least 3: two timed steps after one of warm-up")
    args.warmup = min(args.warmup, args.steps - 2)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the engine's Accelerator picks CUDA whenever it sees one
    else:
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROFILES:
            if args.only in (None, name):
                results[name] = run_profile(name, args, Path(tmp))
                print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    for name, r in results.items():
        print(
            f"{name:8s} "
            + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k != "profile")
        )


if __name__ == "__main__":
    main()

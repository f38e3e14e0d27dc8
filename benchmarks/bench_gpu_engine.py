"""The scale profiles trained by the project's own engine and stage code (not a synthetic loop):
steady-state samples/s, peak memory and model FLOPs utilisation, for a GPU worker.

    python -m benchmarks.bench_gpu_engine [--steps 300] [--only cartoon|ldm] [--shards data/cartoons/shards]
                                          [--out results.json] [--small]

- cartoon: configs/cartoon_seed.yaml merged into params.yaml's train_cartoon (117M-parameter UNet, 64 px,
  batch 64), on the cartoon shards of `--shards` (preprocess_cartoons' output), through
  `tasks.cartoon.train.run_training`: the loader, EMA, dvclive, checkpointing, accelerate.
- ldm: configs/ffhq256_ldm.yaml merged into train_ldm (the 258M-parameter UNet on 32x32x4 latents, batch
  84) through `tasks.latent.train.run_training`, on random latents written in encode_latents' shard format
  beside an SD-config `AutoencoderKL` with random weights (nothing can be downloaded; the step's cost does
  not depend on the weights).

Both in bf16 on CUDA (`training.mixed_precision`), float32 on CPU. Sample grids are off and the only
checkpoint is the final one. Steady state: the steps after the first `--warmup`, timed between
step callbacks. FLOPs per step: torch's FlopCounterMode over bench_scale's synthetic step of the same
model and batch. `--small` shrinks both models so the script can be checked on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def profile_params(stage: str, profile: str, over: dict) -> dict:
    from tasks.common.params import _merge_into, stage_params

    params = copy.deepcopy(stage_params(stage, ROOT / "params.yaml"))
    _merge_into(params, yaml.safe_load((ROOT / "configs" / profile).read_text())[stage])
    _merge_into(params, over)
    return params


def engine_overrides(steps: int, device: str, small: bool, workers: int) -> dict:
    over = {"training": {"max_train_steps": steps, "num_epochs": 10_000, "checkpointing_steps": 10 ** 9,
                         "samples_every_epochs": 0, "mixed_precision": "bf16" if device == "cuda" else "no"},
            "data": {"workers": workers}}
    if small:
        over["model"] = {"block_out_channels": [32, 32, 64], "norm_num_groups": 8, "attention_head_dim": 8}
        over["data"]["batch_size"] = 8
    return over


def fake_latents(out: Path, n: int, small: bool) -> tuple[Path, Path]:
    """An SD-config VAE folder (random weights) and `n` random latents in encode_latents' format."""
    from diffusers import AutoencoderKL

    from benchmarks.bench_scale import SD_VAE
    from tasks.common.shards import AtomicShardWriter, shard_name, write_manifest
    from tasks.latent.vae import vae_identity

    cfg = {**SD_VAE, "block_out_channels": [32, 32, 32, 32]} if small else SD_VAE
    vae = AutoencoderKL(**cfg, scaling_factor=0.18215)
    vae.save_pretrained(out / "vae")
    rng, per_shard = np.random.default_rng(0), 1000
    with AtomicShardWriter(out / "latents", "train", max_count=per_shard) as w:
        for i in range(n):
            w.write({"__key__": f"f{i:06d}", "mean.npy": rng.standard_normal((4, 32, 32)).astype(np.float16),
                     "std.npy": np.full((4, 32, 32), 0.05, np.float16), "json": {"key": f"f{i:06d}"}})
    counts = [min(per_shard, n - start) for start in range(0, n, per_shard)]
    shards = [shard_name("train", s) for s in range(len(counts))]
    write_manifest(out / "latents", {
        "kind": "faces_latents", "vae": {"identity": vae_identity(vae), "scaling_factor": 0.18215},
        "latent_shape": [4, 32, 32], "counts": {"images": n, "train": n},
        "splits": {"train": {"count": n, "shards": shards, "shard_counts": counts}},
        "all_shards": shards})
    return out / "vae", out / "latents"


class StepClock:
    """step_callback: wall-clock of every optimizer step after `warmup` (synchronised on CUDA)."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device, self.times = warmup, device, []

    def __call__(self, step: int) -> None:
        if step == self.warmup and self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if step >= self.warmup:
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    def step_seconds(self) -> float:
        return (self.times[-1] - self.times[0]) / max(1, len(self.times) - 1)


def step_flops(name: str, params: dict, device: str) -> float:
    """FLOPs of one training step (forward + backward) of the profile's model at its batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks import bench_scale

    m, batch = params["model"], params["data"]["batch_size"]
    orig = bench_scale.profile
    bench_scale.profile = lambda _: {f"train_{name}": params}  # the merged params, --small included
    try:
        if name == "cartoon":
            modules, loss, _ = bench_scale.cartoon_model(device)
        else:
            modules, loss, _, _ = bench_scale.ldm_model(device, 1.0, batch=batch)
    finally:
        bench_scale.profile = orig
    with FlopCounterMode(display=False) as counter, bench_scale.autocast(device):
        loss().backward()
    del modules, m
    return float(counter.get_total_flops())


def run_profile(name: str, args, work: Path) -> dict:
    from tasks.cartoon.config import TrainCartoonConfig
    from tasks.latent.config import TrainLdmConfig

    stage = f"train_{name}"
    profile = "cartoon_seed.yaml" if name == "cartoon" else "ffhq256_ldm.yaml"
    params = profile_params(stage, profile, engine_overrides(args.steps, args.device, args.small, args.workers))
    out = work / name
    clock = StepClock(args.warmup, args.device)
    paths = [str(out / d) for d in ("model", "ckpt", "live")] + [str(out / "metrics.json")]
    if name == "cartoon":
        from tasks.cartoon.train import run_training

        summary = run_training(args.shards, *paths, TrainCartoonConfig.from_params(params, stage),
                               step_callback=clock, show_progress=False)
    else:
        from tasks.latent.train import run_training

        vae_dir, latent_dir = fake_latents(out, args.ldm_latents, args.small)
        summary = run_training(str(latent_dir), str(vae_dir), *paths, TrainLdmConfig.from_params(params, stage),
                               step_callback=clock, show_progress=False)
    seconds, batch = clock.step_seconds(), params["data"]["batch_size"]
    flops = step_flops(name, params, args.device)
    result = {"profile": profile, "steps": summary["steps"], "batch": batch, "step_ms": seconds * 1e3,
              "samples_per_s": batch / seconds, "engine_samples_per_s": summary["run"]["samples_per_second"],
              "tflop_per_step": flops / 1e12, "achieved_tflops": flops / seconds / 1e12,
              "final_loss": summary["final_loss"]}
    if args.device == "cuda":
        result["peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30
        result["mfu"] = flops / seconds / (args.peak_tflops * 1e12)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20, help="steps left out of the steady state")
    ap.add_argument("--only", choices=["cartoon", "ldm"], default=None)
    ap.add_argument("--shards", default=str(ROOT / "data" / "cartoons" / "shards"))
    ap.add_argument("--ldm-latents", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    ap.add_argument("--small", action="store_true", help="tiny models: check the script on a CPU")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("cartoon", "ldm"):
            if args.only in (None, name):
                results[name] = run_profile(name, args, Path(tmp))
                print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    for name, r in results.items():
        print(f"{name:8s} " + "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                                         if k != "profile"))


if __name__ == "__main__":
    main()

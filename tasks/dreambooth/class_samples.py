"""Stage sample_class: prior-preservation data, latents sampled from the base model.

The samples stay latents (no decode / re-encode round trip) in the latent shard format of
encode_latents (`mean.npy` = the sampled latent, unscaled; `std.npy` = 0), so one loader reads
subject and class latents alike. Shard i holds samples [i * shard_size, ...) drawn from a generator
seeded by (seed, i): a shard does not depend on the others, so a killed run resumes per shard
(tasks.shards.dataset.ResumableShards) and the result is the same as an uninterrupted run. The
shard fingerprint holds the base model's identity (UNet weights + config, VAE identity), the
sampler, steps, seed, count and the stage's code identity (tasks/tracking/identity.py),
so samples of another base model are never reused (diffusers' script counts files in a folder and
would reuse them).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipelines import make_scheduler
from pipelines.outputs import to_output
from tasks.dreambooth.base import base_identity, load_base
from tasks.dreambooth.config import SampleClassConfig
from tasks.latent.encode import KIND, iter_latents
from tasks.reporting.grid import square_grid
from tasks.shards.dataset import ResumableShards, shard_name
from tasks.tracking.identity import code_identity, identity  # other sampling code samples again

FORMAT_VERSION = 1  # bump when what a class shard stores changes


def shard_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"class-{seed}-{index}".encode()).digest()[:8], "little") % (2**63)


def plan(cfg: SampleClassConfig) -> list[tuple[int, int, int]]:
    """(shard index, first sample, count) covering num_class_samples."""
    n = cfg.num_class_samples
    return [
        (i, i * cfg.shard_size, min(cfg.shard_size, n - i * cfg.shard_size))
        for i in range(math.ceil(n / cfg.shard_size))
    ]


def shard_fingerprints(items, base: dict, cfg: SampleClassConfig) -> dict[str, str]:
    common = {
        "base": base["identity"],
        "scheduler": cfg.scheduler,
        "steps": cfg.num_inference_steps,
        "seed": cfg.seed,
        "format": FORMAT_VERSION,
        "code": code_identity(),
    }
    return {shard_name("train", i): identity({**common, "index": i, "count": c}) for i, _, c in items}


def sample_latents(pipe, count: int, seed: int, cfg: SampleClassConfig, device: torch.device) -> torch.Tensor:
    """`count` scaled latents (as the UNet sees them), in batches, from one generator."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for start in range(0, count, cfg.batch_size):
        n = min(cfg.batch_size, count - start)
        noise = torch.randn((n, *pipe.latent_shape), generator=gen)
        out.append(
            pipe(
                batch_size=n,
                num_inference_steps=cfg.num_inference_steps,
                latents=noise.to(device),
                generator=gen,
                output_type="latent",
            )
            .images.float()
            .cpu()
        )
    return torch.cat(out)


def sample_class(
    base_dir: str,
    out_dir: str,
    grid_path: str,
    cfg: SampleClassConfig,
    *,
    log=print,
    shard_callback: Callable[[str], None] | None = None,
) -> dict:
    """Sample the shards not already sampled from this base model; write the manifest and grid."""
    out = Path(out_dir)
    pipe = load_base(base_dir)
    base = base_identity(pipe)
    pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    items = plan(cfg)
    shards = ResumableShards(out, shard_fingerprints(items, base, cfg), on_shard=shard_callback)
    out.mkdir(parents=True, exist_ok=True)
    if (old := shards.completed()) is not None and Path(grid_path).is_file():
        log(f"sample_class: {out} already holds these samples (base {base['identity']}); nothing to do")
        return old
    done = shards.resume()
    log(
        f"sample_class: {len(items)} shards, {len(done)} already sampled from base {base['identity']}, "
        f"{len(items) - len(done)} to do; removed {shards.removed} stale files"
    )
    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu" if cfg.device == "auto" else cfg.device
    )
    pipe.to(device)
    scale = float(pipe.vae.config.scaling_factor)
    t0, made = time.perf_counter(), 0
    for index, first, count in items:
        if shard_name("train", index) in done:
            continue
        z = sample_latents(pipe, count, shard_seed(cfg.seed, index), cfg, device) / scale  # unscaled, as VAE latents
        mean = z.numpy().astype(np.float16)
        keys = [f"class-{first + j:06d}" for j in range(count)]
        shards.write(
            "train",
            index,
            (
                {"__key__": key, "mean.npy": mean[j], "std.npy": np.zeros_like(mean[j]), "json": {"key": key}}
                for j, key in enumerate(keys)
            ),
        )
        made += count
    seconds = time.perf_counter() - t0
    rate = made / seconds if made and seconds > 0 else None
    log(f"sample_class: sampled {made} latents in {seconds:.1f} s ({rate or 0:.2f} images/s on {device})")
    manifest = _manifest(out, base_dir, base, pipe, cfg, items, shards.fingerprint, rate)
    write_grid(pipe, out, manifest, grid_path, cfg.grid_images)
    return shards.finalise(manifest)


def _manifest(
    out: Path, base_dir: str, base: dict, pipe, cfg: SampleClassConfig, items, run_fp: str, rate: float | None
) -> dict:
    shards = [shard_name("train", i) for i, _, _ in items]
    shape = list(pipe.latent_shape)
    return {
        "kind": KIND,  # read like encode_latents' output
        "schema": {
            "mean.npy": f"float16 {shape}: a latent sampled from the base model (unscaled)",
            "std.npy": f"float16 {shape}: zeros (a sample, not a posterior)",
            "json": "key",
        },
        "vae": {
            "identity": base["vae"],
            "class": type(pipe.vae).__name__,
            "scaling_factor": float(pipe.vae.config.scaling_factor),
            "path": str(Path(base_dir) / "vae"),
        },
        "base": {"dir": str(base_dir), **base},
        "sampler": {
            "scheduler": cfg.scheduler,
            "num_inference_steps": cfg.num_inference_steps,
            "seed": cfg.seed,
            "shard_seeds": "sha256('class-{seed}-{shard}')",
        },
        "latent_shape": shape,
        "flip": False,
        "dtype": "float16",
        "counts": {"images": cfg.num_class_samples, "train": cfg.num_class_samples},
        "splits": {
            "train": {"count": cfg.num_class_samples, "shards": shards, "shard_counts": [c for _, _, c in items]}
        },
        "all_shards": shards,
        "params": cfg.to_dict(),
        "format_version": FORMAT_VERSION,
        "fingerprint": run_fp,
        "throughput_images_per_second": rate,
    }


def write_grid(pipe, out: Path, manifest: dict, grid_path: str, n: int) -> None:
    """The first `n` class samples decoded, to look at (the shards stay latents)."""
    if n == 0:
        return
    latents = []
    for name in manifest["all_shards"]:
        latents += [torch.from_numpy(s["mean.npy"].astype(np.float32)) for s in iter_latents(out / name)]
        if len(latents) >= n:
            break
    z = torch.stack(latents[:n]).to(pipe.device) * float(pipe.vae.config.scaling_factor)
    with torch.no_grad():
        images = pipe.decode_latents(z)
    Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
    square_grid(to_output(images, "pil", True).images, scale=2).save(grid_path)

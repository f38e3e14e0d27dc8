"""Stage encode_latents: aligned face shards -> VAE latent shards (float16 posterior mean and std).

Layout: one latent shard per aligned shard, with the same name (`train-000003.tar` encodes the
aligned `train-000003.tar`). Each sample holds `mean.npy` and `std.npy` (float16, (C, h, w)),
optionally `mean_flip.npy` / `std_flip.npy` (the horizontally flipped face) and `json` (its key).
Storing the posterior's moments rather than one sample (as NVlabs' EDM2 does) lets training draw
a fresh z = mean + std * eps each time.

Resumption (tasks.shards.dataset.ResumableShards): a shard's fingerprint is the VAE identity (hash
of its weights and config), the input shard's md5, the params that change the bytes (resolution,
resample, flip), FORMAT_VERSION and the stage's code identity. The DVC out is declared `persist:
true`, so a killed run leaves its finished shards for the next one, and the fingerprint makes that
safe: a new VAE (the `models/vae` dep changed) or resolution matches no record, so every shard is
encoded again; params that do not change the bytes (batch size, device, processes) match, so
nothing is; a code edit encodes everything again. FORMAT_VERSION names a change of what is stored.

Several processes: `num_processes` > 1 re-launches this module under `accelerate launch`; each
process encodes its own shards (pending[rank::world]) on its own device, rank 0 writes the manifest.
"""

from __future__ import annotations

import math
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tasks.latent.images import decode_png, iter_shard, to_model_input
from tasks.latent.vae import add_sums, latent_variance, load_vae, moment_sums, posterior_moments, vae_identity
from tasks.processes.launch import job_main, launch
from tasks.reporting.progress import progress as progress_bar
from tasks.shards.dataset import ResumableShards, read_manifest, shard_name
from tasks.tracking.hashing import file_digest
from tasks.tracking.identity import code_identity, identity  # other code re-encodes

FORMAT_VERSION = 1  # bump when what a latent shard stores changes
KIND = "faces_latents"


def plan(aligned_dir: str | Path) -> list[tuple[str, int, Path]]:
    """(split, index, input shard) for every aligned shard the manifest lists."""

    manifest = read_manifest(aligned_dir)
    out = []
    for split, entry in sorted(manifest["splits"].items()):
        for name in entry["shards"]:
            stem = name.removesuffix(".tar")
            s, _, idx = stem.rpartition("-")
            if s != split or not idx.isdigit():
                raise ValueError(f"unexpected shard name {name} in split {split} of {aligned_dir}")
            path = Path(aligned_dir) / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in the manifest but missing")
            out.append((split, int(idx), path))
    if not out:
        raise ValueError(f"{aligned_dir} lists no shards")
    return out


def shard_fingerprints(items: list[tuple[str, int, Path]], vae_id: str, resolution: int, flip: bool) -> dict[str, str]:
    base = {
        "vae": vae_id,
        "resolution": resolution,
        "resample": "lanczos",
        "flip": bool(flip),
        "format": FORMAT_VERSION,
        "code": code_identity(),
    }
    return {p.name: identity(base, p.name, file_digest(p, "md5")) for _, _, p in items}


def encode_batch(vae, images: np.ndarray, device: torch.device, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, H, W, 3) -> float16 (mean, std), each (B, C, h, w). One encoder call."""
    x = to_model_input(images).to(device)
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16" and device.type == "cuda"),
    ):
        mean, std = posterior_moments(vae, x)
    return mean.float().cpu().numpy().astype(np.float16), std.float().cpu().numpy().astype(np.float16)


def encode_shard(
    vae,
    src: Path,
    shards: ResumableShards,
    split: str,
    idx: int,
    *,
    resolution: int,
    flip: bool,
    batch_size: int,
    device: torch.device,
    precision: str,
    on_images: Callable[[int], None],
) -> dict:
    """Encode one aligned shard into the latent shard of the same name; returns its record."""

    keys, images = [], []
    for key, png in iter_shard(src):
        keys.append(key)
        images.append(decode_png(png, resolution))
    samples, sums = [], None
    for i in range(0, len(keys), batch_size):
        batch = np.stack(images[i : i + batch_size])
        mean, std = encode_batch(vae, batch, device, precision)
        sums = add_sums(sums, moment_sums(torch.from_numpy(mean), torch.from_numpy(std)))
        if flip:
            mean_f, std_f = encode_batch(vae, batch[:, :, ::-1], device, precision)
        for j, key in enumerate(keys[i : i + batch_size]):
            sample = {"__key__": key, "mean.npy": mean[j], "std.npy": std[j], "json": {"key": key}}
            if flip:
                sample.update({"mean_flip.npy": mean_f[j], "std_flip.npy": std_f[j]})
            samples.append(sample)
        on_images(len(batch))
    return shards.write(split, idx, samples, {"split": split, "sums": sums})


def _resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(device)


def encode_latents(
    aligned_dir: str,
    vae_dir: str,
    out_dir: str,
    *,
    resolution: int | None,
    flip: bool,
    batch_size: int,
    device: str,
    precision: str,
    num_processes: int,
    params: dict | None = None,
    progress: bool = True,
    log=print,
    shard_callback: Callable[[str], None] | None = None,
) -> dict:
    """Encode every aligned shard not already encoded by this VAE; write the manifest. Returns it.
    The settings are params.yaml's encode_latents section (EncodeLatentsConfig), all required."""
    if num_processes > 1:
        launch(
            "tasks.latent.encode",
            Path(out_dir).with_suffix(".job.json"),
            dict(
                aligned_dir=aligned_dir,
                vae_dir=vae_dir,
                out_dir=out_dir,
                resolution=resolution,
                flip=flip,
                batch_size=batch_size,
                device=device,
                precision=precision,
                params=params,
                progress=progress,
            ),
            num_processes,
        )
        return read_manifest(out_dir)
    return _encode_process(
        aligned_dir,
        vae_dir,
        out_dir,
        resolution=resolution,
        flip=flip,
        batch_size=batch_size,
        device=device,
        precision=precision,
        params=params,
        progress=progress,
        log=log,
        shard_callback=shard_callback,
        rank=0,
        world=1,
        barrier=lambda: None,
    )


def _encode_process(
    aligned_dir,
    vae_dir,
    out_dir,
    *,
    resolution,
    flip,
    batch_size,
    device,
    precision,
    params,
    progress,
    log,
    shard_callback,
    rank: int,
    world: int,
    barrier: Callable[[], None],
    local_rank: int = 0,
) -> dict:

    out = Path(out_dir)
    items = plan(aligned_dir)
    vae = load_vae(vae_dir)
    vae_id = vae_identity(vae)
    if resolution is None:  # the size the VAE was trained or saved for
        size = vae.config.sample_size
        resolution = int(size if isinstance(size, int) else size[0])
    shards = ResumableShards(out, shard_fingerprints(items, vae_id, resolution, flip), on_shard=shard_callback)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    if (old := shards.completed()) is not None:
        log(f"encode_latents: {out} already holds these latents (VAE {vae_id}); nothing to do")
        return old
    done = shards.resume(clean=rank == 0, barrier=barrier)  # every rank reads the records before rank 0 cleans
    if rank == 0:
        log(
            f"encode_latents: {len(items)} shards, {len(done)} already encoded by VAE {vae_id}, "
            f"{len(items) - len(done)} to do; removed {shards.removed} stale files"
        )
    pending = [it for it in items if it[2].name not in done]
    mine = pending[rank::world]
    dev = _resolve_device(device, local_rank)
    vae = vae.to(dev)
    total = 0
    for _, _, p in mine:  # count images cheaply from the tar members
        with tarfile.open(p) as tf:
            total += sum(1 for m in tf.getmembers() if m.name.endswith(".png"))
    bar = progress_bar(
        total=total,
        desc=f"encode[{rank}]" if world > 1 else "encode",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    t0, n_images = time.perf_counter(), 0

    def on_images(n: int) -> None:
        nonlocal n_images
        n_images += n
        bar.update(n)

    for split, idx, src in mine:
        encode_shard(
            vae,
            src,
            shards,
            split,
            idx,
            resolution=resolution,
            flip=flip,
            batch_size=batch_size,
            device=dev,
            precision=precision,
            on_images=on_images,
        )
    bar.close()
    seconds = time.perf_counter() - t0
    throughput = n_images / seconds if seconds > 0 and n_images else None
    log(
        f"encode_latents[{rank}]: encoded {n_images} images ({'x2 with flips, ' if flip else ''}{len(mine)} shards) "
        f"in {seconds:.1f} s = {throughput or 0:.1f} images/s on {dev}"
    )
    barrier()
    if rank != 0:
        return {}
    # ---- manifest (rank 0): the source of truth for readers
    records = shards.records()
    splits: dict[str, dict] = {}
    sums_train = None
    for split, idx, src in items:
        rec = records[src.name]
        sp = splits.setdefault(split, {"count": 0, "shards": [], "shard_counts": []})
        if rec["count"]:
            sp["count"] += rec["count"]
            sp["shards"].append(shard_name(split, idx))
            sp["shard_counts"].append(rec["count"])
        if split == "train" and rec["sums"]:
            sums_train = add_sums(sums_train, rec["sums"])
    first = next(p for _, _, p in items)
    with_shape = next(iter_latents(out / first.name))
    shape = list(with_shape["mean.npy"].shape)
    aligned = read_manifest(aligned_dir)
    measured = 1.0 / math.sqrt(latent_variance(sums_train)) if sums_train else None
    manifest = {
        "kind": KIND,
        "schema": {
            "mean.npy": f"float16 {shape}: posterior mean (unscaled)",
            "std.npy": f"float16 {shape}: posterior std (unscaled; 0 for a VQ model)",
            **(
                {
                    "mean_flip.npy": "as mean.npy, of the horizontally flipped face",
                    "std_flip.npy": "as std.npy, of the horizontally flipped face",
                }
                if flip
                else {}
            ),
            "json": "key",
            "training": "z = (mean + std * eps) * scaling_factor",
        },
        "vae": {
            "identity": vae_id,  # hash of weights + config
            "class": type(vae).__name__,
            "config": {k: v for k, v in dict(vae.config).items() if not k.startswith("_")},
            "path": str(vae_dir),
            "scaling_factor": float(vae.config.scaling_factor),
            "scaling_factor_measured_here": measured,  # 1 / std of these training latents
        },
        "latent_shape": shape,
        "image_resolution": resolution,
        "flip": bool(flip),
        "dtype": "float16",
        "counts": {
            "images": sum(sp["count"] for sp in splits.values()),
            **{s: sp["count"] for s, sp in splits.items()},
        },
        "splits": splits,
        "all_shards": [n for sp in splits.values() for n in sp["shards"]],
        "source": {"dir": str(aligned_dir), "fingerprint": aligned.get("fingerprint")},
        "params": params or {},
        "format_version": FORMAT_VERSION,
        "fingerprint": shards.fingerprint,
        "throughput_images_per_second": throughput,
    }
    return shards.finalise(manifest)


def iter_latents(path: str | Path):
    """Decoded samples of one latent shard: dicts with `__key__` and float16 numpy arrays."""
    import webdataset as wds

    ds = wds.WebDataset([str(path)], shardshuffle=False, empty_check=False).decode()
    yield from ds


def _launched_process(**job) -> dict:
    """One process of `accelerate launch -m tasks.latent.encode --job job.json`."""
    from accelerate import PartialState

    state = PartialState()
    return _encode_process(
        **job,
        log=print,
        shard_callback=None,
        rank=state.process_index,
        world=state.num_processes,
        barrier=state.wait_for_everyone,
        local_rank=state.local_process_index,
    )


if __name__ == "__main__":
    job_main(_launched_process, "one encoding process (see encode_latents)")

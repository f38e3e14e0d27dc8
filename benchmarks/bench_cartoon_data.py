"""Cartoon data throughput: drawing, the preprocess stage vs a plain Pillow loop, and shard reading.

    python -m benchmarks.bench_cartoon_data [--images 2000] [--workers 0] [--dir /tmp/cartoon-bench]

Prints images/s of the synthetic drawing (`fetch_cartoons`' renderer on all cores), of
`preprocess_cartoons` (all cores, params from params.yaml) and of a straight single-process loop
doing the same decode, composite, crop, resize and PNG encode on the same images, their ratio, and
the loader's samples/s at 64x64, batch 64, with 0 and 2 DataLoader workers. `--dir` keeps the drawn
images and shards there and reuses the drawing on the next run.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from tasks.cartoon.fetch import render_synthetic
from tasks.cartoon.preprocess import preprocess_cartoons
from tasks.config.params import stage_params


def plain_loop(raw: Path) -> int:
    """What one would write by hand: one process, the same per-image work, results kept in memory."""
    n = 0
    for png in sorted(raw.glob("*.png")):
        im = Image.open(png).convert("RGBA")
        flat = Image.new("RGBA", im.size, (255, 255, 255, 255))
        flat.alpha_composite(im)
        crop = flat.convert("RGB").crop((70, 70, 430, 430)).resize((64, 64), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        n += 1
    return n


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def stage_kwargs(workers: int) -> dict:
    """params.yaml's preprocess_cartoons section (64 px, the default crop and filter), all images in one split."""
    params = {
        k: v
        for k, v in stage_params("preprocess_cartoons").items()
        if k in ("background", "crop", "resolution", "resample", "image_size", "max_reject_fraction")
    }
    return {**params, "val_fraction": 0.0, "shard_size": 250, "workers": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=0, help="stage processes; 0 = all cores")
    parser.add_argument("--dir", default=None, help="keep data here (default: a temporary folder)")
    args = parser.parse_args()
    tmp = None if args.dir else tempfile.TemporaryDirectory()
    root = Path(args.dir or tmp.name)
    raw, shards = root / "raw", root / "shards"
    try:
        if not raw.is_dir() or len(list(raw.glob("*.png"))) != args.images:
            shutil.rmtree(raw, ignore_errors=True)
            _, t_draw = timed(lambda: render_synthetic(str(raw), args.images, 0, args.workers))
            print(f"synthetic drawing      {args.images / t_draw:8.1f} images/s (incl. pool start-up)")
        plain_loop(raw)  # warm the page cache so both sides read from memory
        n, t_plain = timed(lambda: plain_loop(raw))
        _, t_stage = timed(lambda: preprocess_cartoons(str(raw), str(shards), **stage_kwargs(args.workers)))
        print(f"cores: {os.cpu_count()}  images: {n}")
        print(f"plain Pillow loop      {n / t_plain:8.1f} images/s")
        print(f"preprocess_cartoons    {n / t_stage:8.1f} images/s (incl. pool start-up and shard writing)")
        print(f"ratio stage/plain      {t_plain / t_stage:8.2f}x")
        from tasks.cartoon.loader import (
            cartoon_loader,  # here: the stage above runs without torch loaded, as in its DVC stage
        )

        for workers in (0, 2):
            loader = cartoon_loader(shards, "train", batch_size=64, workers=workers, shuffle_buffer=500)
            list(loader)  # warm-up (worker start-up, page cache)
            samples, t_read = timed(lambda: sum(b["image"].shape[0] for b in loader))
            print(f"loader, {workers} workers      {samples / t_read:8.1f} samples/s (64x64, batch 64)")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()

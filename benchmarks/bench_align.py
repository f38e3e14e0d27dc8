"""Alignment throughput: the stage's pool (per landmark source) vs a straight reference loop.

    .venv/bin/python -m benchmarks.bench_align [--images 64] [--output-size 256] [--transform-size 1024]

Draws N synthetic in-the-wild photos, then, in one run on the same inputs:
  reference       NVlabs' recreate_aligned_images loop body, single process (Pillow >= 10 spelling)
  metadata        align_to_shards with the JSON's landmarks, all cores
  dlib            align_to_shards with dlib detection + 68-point predictor, all cores
  face_alignment  align_to_shards with FAN in the main process (skipped when its weights are absent)
and prints images/s, the speed-up over the reference, and whether the outputs are pixel-identical.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import scipy.ndimage


def reference_align(src_file, lm, output_size=1024, transform_size=4096, enable_padding=True) -> PIL.Image.Image:
    """NVlabs/ffhq-dataset download_ffhq.py, recreate_aligned_images, one item (rotate_level=True,
    random_shift=0), kept as close to the original text as Pillow >= 10 allows (ANTIALIAS -> LANCZOS)."""
    lm = np.array(lm)
    lm_eye_left = lm[36:42]
    lm_eye_right = lm[42:48]
    lm_mouth_outer = lm[48:60]

    eye_left = np.mean(lm_eye_left, axis=0)
    eye_right = np.mean(lm_eye_right, axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_left = lm_mouth_outer[0]
    mouth_right = lm_mouth_outer[6]
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c0 = eye_avg + eye_to_mouth * 0.1

    img = PIL.Image.open(src_file)
    quad = np.stack([c0 - x - y, c0 - x + y, c0 + x + y, c0 + x - y])
    qsize = np.hypot(*x) * 2

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, PIL.Image.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = img.shape
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
            1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]),
        )
        blur = qsize * 0.02
        img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
        img = PIL.Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), "RGB")
        quad += pad[:2]

    img = img.transform((transform_size, transform_size), PIL.Image.QUAD, (quad + 0.5).flatten(), PIL.Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), PIL.Image.LANCZOS)
    return img


def read_shards(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".png"):
                    out[m.name[:-4]] = np.asarray(PIL.Image.open(io.BytesIO(t.extractfile(m).read())))
    return out


def main(argv=None) -> None:
    from tasks.faces.fetch import fetch_synthetic
    from tasks.faces.landmarks import check_face_alignment_weights
    from tasks.faces.work import AlignConfig, align_to_shards, items_from_raw

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--output-size", type=int, default=256)
    ap.add_argument("--transform-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    args = ap.parse_args(argv)
    workers = args.workers or os.cpu_count()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fetch_synthetic(tmp / "raw", num_images=args.images, num_identities=8, seed=0, progress=False)
        items, _ = items_from_raw(tmp / "raw", "metadata")
        print(
            f"{args.images} synthetic photos, output {args.output_size}, transform {args.transform_size}, "
            f"{workers} processes ({os.cpu_count()} cores)"
        )

        t = time.perf_counter()
        ref = {}
        for it in items:
            im = reference_align(it.path, it.landmarks, args.output_size, args.transform_size, True)
            buf = io.BytesIO()
            im.save(buf, format="PNG")  # the reference saves a PNG too: same work
            ref[it.key] = np.asarray(im)
        t_ref = time.perf_counter() - t
        rows = [("reference (1 process)", len(items) / t_ref, 1.0, "")]

        for source in ("metadata", "dlib", "face_alignment"):
            if source == "face_alignment":
                try:
                    check_face_alignment_weights(offline=True)
                except FileNotFoundError as exc:
                    rows.append((source, None, None, "skipped: " + str(exc).splitlines()[0]))
                    continue
            fan = None
            if source == "face_alignment":
                from tasks.faces.landmarks import FanLandmarks

                fan = FanLandmarks("cpu", 8)
            its, _ = items_from_raw(tmp / "raw", source)
            cfg = AlignConfig(source, args.output_size, args.transform_size, True, 0, 1)
            out = tmp / f"out-{source}"
            t = time.perf_counter()
            m = align_to_shards(
                its, out, cfg, shard_size=16, workers=workers, params={}, progress=False, log=lambda s: None, fan=fan
            )
            dt = time.perf_counter() - t
            note = f"{m['counts']['written']} aligned, {m['counts']['rejected']} rejected"
            if source == "metadata":
                got = read_shards(out)
                same = sum(np.array_equal(got[k], ref[k]) for k in ref)
                note += f"; pixel-identical to the reference: {same}/{len(ref)}"
            rows.append((f"{source} ({workers} processes)", len(items) / dt, t_ref / dt, note))

    print(f"{'source':32s} {'images/s':>9s} {'vs ref':>7s}  notes")
    for name, ips, ratio, note in rows:
        print(
            f"{name:32s} {'-' if ips is None else format(ips, '9.2f'):>9} "
            f"{'' if ratio is None else format(ratio, '6.2f') + 'x':>7s}  {note}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()

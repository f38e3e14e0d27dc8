"""The cartoon loader's batches: what each sample becomes, with and without DataLoader workers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.cartoon.loader import cartoon_loader
from tasks.cartoon.schema import AttributeSchema
from tasks.shards.dataset import AtomicShardWriter, write_manifest

SCHEMA = AttributeSchema(("hair_color", "glasses"), (3, 2))


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """20 random 8x8 images in 2 shards; one stored as RGBA and one as palette, which must read as RGB."""
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    samples = {}
    with AtomicShardWriter(out, "train", max_count=10) as w:
        for i in range(20):
            array = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            attrs = [int(rng.integers(c)) for c in SCHEMA.counts]
            mode = {3: "RGBA", 4: "P"}.get(i, "RGB")
            png = _png(array, mode)
            samples[f"k{i:02d}"] = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), attrs)
            w.write({"__key__": f"k{i:02d}", "png": png, "attrs.json": json.dumps(attrs).encode()})
    write_manifest(
        out,
        {"schema": SCHEMA.to_json(), "splits": {"train": {"shards": w.shards, "count": 20, "shard_counts": [10, 10]}}},
    )
    return str(out), samples


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_hold_each_sample_as_nchw_floats_and_one_hot(shards, workers):
    shard_dir, samples = shards
    batches = list(cartoon_loader(shard_dir, "train", batch_size=5, workers=workers, shuffle_buffer=4, seed=1))
    assert len(batches) == 4
    seen = set()
    for b in batches:
        assert b["image"].dtype == torch.float32 and b["image"].shape == (5, 3, 8, 8) and b["image"].is_contiguous()
        assert b["onehot"].shape == (5, SCHEMA.width) and b["onehot"].dtype == torch.float32
        for j, key in enumerate(b["key"]):
            array, attrs = samples[key]
            expected = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
            torch.testing.assert_close(b["image"][j], expected, rtol=0, atol=1e-6)
            assert b["attrs"][j].tolist() == attrs
            hot = np.flatnonzero(b["onehot"][j].numpy())
            assert hot.tolist() == [a + o for a, o in zip(attrs, SCHEMA.offsets)]
            seen.add(key)
    assert seen == set(samples)


def test_same_seed_same_batches_with_any_workers(shards):
    shard_dir, _ = shards
    keys = [
        [
            k
            for b in cartoon_loader(shard_dir, "train", batch_size=5, workers=w, shuffle_buffer=4, seed=7)
            for k in b["key"]
        ]
        for w in (0, 0)
    ]
    assert keys[0] == keys[1]


def _pil_rgb(png: bytes) -> np.ndarray:
    """What the loader decoded before OpenCV took the 8-bit RGB PNGs."""
    image = Image.open(io.BytesIO(png))
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _png_variants() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)

    def save(image, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG", **kw)
        return buf.getvalue()

    base = Image.fromarray(rgb)
    return {
        "rgb": save(base),
        "rgb level 1": save(base, compress_level=1),
        "rgb level 9": save(base, compress_level=9),
        "rgb transparency key": save(base, transparency=tuple(int(v) for v in rgb[0, 0])),
        "rgb by libpng": _libpng(rgb),
        "rgba": save(base.convert("RGBA")),
        "palette": save(base.convert("P")),
        "grey": save(base.convert("L")),
        "rgb 16-bit": _rgb16(rgb),
    }


def _libpng(rgb: np.ndarray) -> bytes:
    """The same pixels written by another encoder (OpenCV's libpng: other filters and chunks)."""
    import cv2

    ok, data = cv2.imencode(".png", rgb[:, :, ::-1].copy())
    assert ok
    return data.tobytes()


def _rgb16(rgb: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", (rgb[:, :, ::-1].astype(np.uint16) * 257))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("kind", list(_png_variants()))
def test_decode_gives_pillows_pixels(kind):
    from tasks.cartoon.loader import decode_image

    png = _png_variants()[kind]
    got = decode_image(png)
    assert got.dtype == np.uint8 and got.shape == (9, 7, 3)
    np.testing.assert_array_equal(got, _pil_rgb(png))


def test_decode_of_a_damaged_png_fails_as_before():
    from tasks.cartoon.loader import decode_image

    png = _png_variants()["rgb"]
    with pytest.raises(Exception):  # noqa: B017 (Pillow's error for a cut PNG varies by version)
        _pil_rgb(png[:60])
    with pytest.raises(Exception):  # noqa: B017
        decode_image(png[:60])


def test_float_conversion_matches_torch_for_every_value():
    """numpy's NCHW conversion in _FinishBatch gives the floats torch's float().div_(127.5).sub_(1)
    gave, for every uint8 value in every position of a batch."""
    from tasks.cartoon.loader import _FinishBatch

    values = np.resize(np.arange(256, dtype=np.uint8), 7 * 16 * 16 * 3).reshape(7, 16, 16, 3)
    batch = {"image": torch.from_numpy(values), "attrs": torch.zeros((7, 2), dtype=torch.int64), "key": ["k"] * 7}
    got = _FinishBatch(SCHEMA)(batch)["image"]
    expected = batch["image"].permute(0, 3, 1, 2).contiguous().float().div_(127.5).sub_(1.0)
    assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, expected)


@pytest.mark.parametrize(
    "workers,drop_last,shuffle", [(0, True, True), (2, True, True), (2, False, True), (2, False, False)]
)
def test_batches_are_what_dataloader_batching_made(shards, workers, drop_last, shuffle):
    """Batching inside the pipeline (numpy stacks, DataLoader(batch_size=None)) against plain
    DataLoader batching, rebuilt here: per-sample tensors batched by the DataLoader with default_collate."""
    import webdataset as wds
    from torch.utils.data import DataLoader

    from tasks.cartoon.loader import _FinishBatch
    from tasks.shards.dataset import shard_paths
    from tasks.shards.loader import _SeededShuffle

    shard_dir, _ = shards
    kw = dict(batch_size=3, workers=workers, shuffle_buffer=4, seed=5, epoch=2, drop_last=drop_last, shuffle=shuffle)
    got = list(cartoon_loader(shard_dir, "train", **kw))

    urls = shard_paths(shard_dir, "train")
    if shuffle:
        import random

        random.Random("5-2-0").shuffle(urls)
    dataset = wds.WebDataset(
        urls, shardshuffle=False, nodesplitter=lambda u: u, workersplitter=wds.split_by_worker, empty_check=False
    )
    if shuffle:
        dataset = dataset.compose(_SeededShuffle(4, 5, 2, 0))
    dataset = dataset.map(
        lambda s: {
            "image": torch.from_numpy(_pil_rgb(s["png"])),
            "attrs": torch.tensor(json.loads(s["attrs.json"]), dtype=torch.int64),
            "key": s["__key__"],
        }
    )
    finish = _FinishBatch(SCHEMA)
    expected = [finish(b) for b in DataLoader(dataset, batch_size=3, num_workers=workers, drop_last=drop_last)]
    assert len(got) == len(expected) == len(cartoon_loader(shard_dir, "train", **kw))
    for g, e in zip(got, expected):
        assert g["key"] == e["key"] and sorted(g) == sorted(e)
        for k in ("image", "onehot", "attrs"):
            assert g[k].dtype == e[k].dtype and g[k].shape == e[k].shape and torch.equal(g[k], e[k])

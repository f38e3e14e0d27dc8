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
from tasks.common.shards import AtomicShardWriter, write_manifest

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
    write_manifest(out, {"schema": SCHEMA.to_json(),
                         "splits": {"train": {"shards": w.shards, "count": 20, "shard_counts": [10, 10]}}})
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
    keys = [[k for b in cartoon_loader(shard_dir, "train", batch_size=5, workers=w, shuffle_buffer=4, seed=7)
             for k in b["key"]] for w in (0, 0)]
    assert keys[0] == keys[1]

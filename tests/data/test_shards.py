"""Shard bytes: the tarfile-only writer against webdataset's, and the loader's direct tar reading."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from webdataset.cache import StreamingOpen
from webdataset.tariterators import tar_file_expander

from tasks.shards.dataset import AtomicShardWriter, TarShardWriter, plain_tar_members
from tasks.shards.loader import ShardDataError, _tar_files


def _samples(n: int = 12, long_key: bool = False) -> list[dict]:
    """What the stages write: PNG bytes, JSON bytes and dicts, .npy arrays, text."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        key = ("k" * 120 if long_key and i == 3 else "k") + f"{i:03d}"
        out.append(
            {
                "__key__": key,
                "png": rng.bytes(int(rng.integers(1, 3000))),
                "attrs.json": json.dumps([i, 2]).encode(),
                "json": {"key": key, "lm": [[1.5, 2.25]], "u": "é"},
                "mean.npy": rng.standard_normal((4, 8, 8)).astype(np.float16),
                "std.npy": np.zeros((4, 8, 8), np.float32),
                "txt": "hello ü",
            }
        )
    return out


def _write(path, samples, writer=TarShardWriter) -> bytes:
    w = writer(str(path))
    for s in samples:
        w.write(s)
    w.close()
    return path.read_bytes()


@pytest.mark.parametrize("long_key", [False, True])
def test_writer_gives_webdataset_tarwriter_bytes(tmp_path, long_key):
    """Byte for byte what webdataset.TarWriter(mtime=0) wrote before: shards made before and after
    the switch are the same DVC content (a long name takes a pax header in both)."""
    samples = _samples(long_key=long_key)
    ours = _write(tmp_path / "ours.tar", samples)
    theirs = _write(tmp_path / "theirs.tar", samples, writer=lambda p: wds.TarWriter(p, mtime=0))
    assert ours == theirs


def test_writer_is_deterministic_with_fixed_metadata(tmp_path):
    samples = _samples()
    assert _write(tmp_path / "a.tar", samples) == _write(tmp_path / "b.tar", samples)
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:6]] == [
        f"k000.{e}" for e in ("attrs.json", "json", "mean.npy", "png", "std.npy", "txt")
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.isreg()) for m in members} == {
        (0, 0, 0, "bigdata", "bigdata", 0o444, True)
    }


def test_webdataset_reads_the_shards_back(tmp_path):
    samples = _samples()
    with AtomicShardWriter(tmp_path, "train", max_count=5) as w:
        for s in samples:
            w.write(s)
    assert w.shards == ["train-000000.tar", "train-000001.tar", "train-000002.tar"] and w.shard_counts == [5, 5, 2]
    assert not list(tmp_path.glob("*.tmp"))
    urls = [str(tmp_path / n) for n in w.shards]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples):
        assert g["png"] == s["png"] and g["attrs.json"] == json.loads(s["attrs.json"])  # decoded as JSON
        assert g["json"] == s["json"] and g["txt"] == s["txt"]
        for k in ("mean.npy", "std.npy"):
            assert g[k].dtype == s[k].dtype and np.array_equal(g[k], s[k])


def test_atomic_writer_abort_leaves_nothing(tmp_path):
    w = AtomicShardWriter(tmp_path, "val", max_count=10)
    w.write(_samples(1)[0])
    assert [p.name for p in tmp_path.iterdir()] == ["val-000000.tar.tmp"]
    w.abort()
    assert not list(tmp_path.iterdir())


def test_writer_rejects_what_it_cannot_encode(tmp_path):
    w = TarShardWriter(tmp_path / "x.tar")
    with pytest.raises(ValueError, match="__key__"):
        w.write({"png": b"x"})
    with pytest.raises(ValueError, match="no encoding"):
        w.write({"__key__": "a", "png": np.zeros(3)})
    w.close()


def test_plain_members_match_tarfile(tmp_path):
    data = _write(tmp_path / "a.tar", _samples())
    with tarfile.open(tmp_path / "a.tar") as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar.getmembers()]
    assert plain_tar_members(data) == expected


def test_anything_but_plain_members_is_left_to_tarfile(tmp_path):
    """None (read it with tarfile) for what the fast parser does not handle."""
    plain = _write(tmp_path / "a.tar", _samples(2))
    long_name = _write(tmp_path / "b.tar", _samples(5, long_key=True))  # a pax header
    bad_checksum = bytearray(plain)
    bad_checksum[0] ^= 1  # the first header's name, not its checksum
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    for data in (long_name, bytes(bad_checksum), gzip.compress(plain), buf.getvalue(), plain[: 1024 + 100]):
        assert plain_tar_members(data) is None


def _expander(urls):
    return list(tar_file_expander(StreamingOpen()([{"url": u} for u in urls])))


def test_loader_reads_files_as_webdatasets_reader_does(tmp_path):
    """The loader's direct parse gives webdataset's file records, also when a shard needs tarfile."""
    plain = tmp_path / "plain.tar"
    _write(plain, _samples())
    other = tmp_path / "other.tar"
    _write(other, _samples(5, long_key=True))
    with tarfile.open(tmp_path / "meta.tar", "w") as tar:  # a metadata file webdataset skips
        for name, data in (("__index__", b"x"), ("a.png", b"png")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    urls = [str(plain), str(other), str(tmp_path / "meta.tar")]
    counts = {str(plain): 12, str(other): 5, str(tmp_path / "meta.tar"): 1}
    assert list(_tar_files([{"url": u} for u in urls], counts)) == _expander(urls)
    with pytest.raises(ShardDataError, match="plain.tar: 12 samples where the manifest lists 13"):
        list(_tar_files([{"url": str(plain)}], {str(plain): 13}))

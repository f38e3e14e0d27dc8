"""Face stages through their task functions (.fn: no Prefect server): FFHQ mirror, folder
rejections, resumption after a kill, the subject report, face_alignment's missing weights."""

import hashlib
import io
import json
import tarfile

import numpy as np
import PIL.Image
import pytest

from flows.align_faces import align_faces_task
from flows.prepare_subject import fetch_subject_task, subject_report_task
from tasks.download.fetch import DownloadError
from tasks.faces.config import AlignFacesConfig, PrepareSubjectConfig
from tasks.faces.fetch import fetch_ffhq, fetch_folder, fetch_synthetic
from tasks.faces.work import METADATA, AlignConfig, align_to_shards, items_from_raw
from tasks.shards.dataset import read_manifest
from tasks.synthetic import faces as synthetic
from tests.helpers.configs import stage_config

ALIGN = dict(
    output_size=64,
    transform_size=256,
    enable_padding=True,
    min_face_size=20,
    shard_size=4,
    workers=1,
    device="cpu",
    batch_size=4,
    dlib_upsample=1,
)


def shard_keys(folder):
    keys = []
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as t:
            keys += sorted({m.name.split(".")[0] for m in t.getmembers()})
    return keys


def make_mirror(tmp_path, n=3):
    """A local FFHQ mirror: in-the-wild photos + ffhq-dataset-v2.json keyed "0", "1", ..."""
    src = tmp_path / "drawn"
    fetch_synthetic(src, num_images=n, num_identities=2, seed=3, image_size=160, workers=1, progress=False)
    meta = json.loads((src / METADATA).read_text())
    mirror = tmp_path / "mirror"
    official = {}
    for key, e in meta.items():
        rel = e["in_the_wild"]["file_path"]
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes((src / rel).read_bytes())
        e["in_the_wild"]["file_url"] = "https://drive.google.com/uc?id=nothing"
        official[str(int(key))] = e
    (mirror / METADATA).write_text(json.dumps(official))
    return mirror, hashlib.md5((mirror / METADATA).read_bytes()).hexdigest()


def test_ffhq_metadata_path_end_to_end_with_a_bad_file(tmp_path):
    mirror, md5 = make_mirror(tmp_path)
    bad = mirror / "in-the-wild-images/00000/00001.png"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:-8] + b"corrupt!")  # same size, wrong md5
    raw = tmp_path / "raw"
    kw = dict(
        images="in_the_wild",
        num_images=None,
        base_url=mirror.as_uri(),
        metadata_md5=md5,
        metadata_size=None,
        num_threads=2,
        retries=0,
        progress=False,
        log=lambda s: None,
        download_dir=tmp_path / "downloads",
    )
    with pytest.raises(DownloadError, match=r"(?s)1 of 3 .*00001\.png.*md5"):
        fetch_ffhq(raw, **kw)
    assert not (raw / "in-the-wild-images/00000/00001.png").exists()  # never used
    assert (raw / "in-the-wild-images/00000/00000.png").exists()  # kept for the rerun
    assert not (raw / "manifest.json").exists()

    bad.write_bytes(good_bytes)  # the mirror is fixed: the rerun fetches only what is missing
    m = fetch_ffhq(raw, **kw)
    assert m["counts"]["images"] == 3 and sorted(json.loads((raw / METADATA).read_text())) == [
        "00000",
        "00001",
        "00002",
    ]
    manifest = align_faces_task.fn(
        str(raw), str(tmp_path / "aligned"), AlignFacesConfig(landmarks="metadata", **ALIGN), record={}
    )
    assert manifest["counts"]["written"] == 3 and manifest["rejected"] == []
    assert shard_keys(tmp_path / "aligned") == ["00000", "00001", "00002"]


def test_rejections_no_face_tiny_face_non_image_truncated(tmp_path):
    from skimage import data

    src = tmp_path / "photos"
    src.mkdir()
    astronaut = PIL.Image.fromarray(data.astronaut())
    astronaut.save(src / "astronaut.png")
    big = PIL.Image.new("RGB", (1024, 1024), (30, 30, 30))  # another photo (a resized copy would be a duplicate)
    big.paste(astronaut.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT), (300, 200))
    big.save(src / "big_astronaut.jpg", quality=90)
    PIL.Image.new("RGB", (200, 150), (90, 120, 60)).save(src / "wall.png")  # no face
    astronaut.crop((0, 0, 400, 400)).resize((235, 235)).save(src / "small.png")  # tiny face (~54 px)
    (src / "notes.jpg").write_text("not a photo")  # non-image
    buf = io.BytesIO()
    PIL.Image.fromarray(data.astronaut()).save(buf, format="JPEG")
    (src / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
    raw = tmp_path / "raw"
    fetch_folder(src, raw, near_duplicate_bits=6, val_fraction=0.0, log=lambda s: None)
    align = {**ALIGN, "min_face_size": 80, "output_size": 128, "transform_size": 512}
    m = align_faces_task.fn(str(raw), str(tmp_path / "aligned"), AlignFacesConfig(landmarks="dlib", **align), record={})
    reasons = {r.get("file") or r["key"]: r["reason"] for r in m["rejected"]}
    assert "not an image" in reasons["notes.jpg"]
    assert "truncated" in reasons["cut.jpg"]
    assert reasons["in-the-wild-images/wall.png"] == "no face detected"
    assert reasons["in-the-wild-images/small.png"].startswith("face too small: 54 px < min_face_size 80")
    assert m["counts"] == {"inputs": 6, "written": 2, "rejected": 4, "train": 2}
    assert read_manifest(tmp_path / "aligned")["rejected"] == m["rejected"]


def test_duplicates_are_dropped_and_reported_distinct_faces_kept(tmp_path):
    """Three copies of one photo once made a 1 train / 2 validation split and a 59 dB PSNR."""
    import shutil

    drawn = tmp_path / "drawn"  # 8 photos, 2 per identity: different photos of one person are kept
    fetch_synthetic(drawn, num_images=8, num_identities=4, seed=0, image_size=160, workers=1, progress=False)
    src = tmp_path / "photos"
    src.mkdir()
    (src / "README.md").write_text("what to put here: skipped, not a rejection")
    for p in sorted(drawn.rglob("*.png")):
        shutil.copy(p, src / f"face{p.stem}.png")
    first = PIL.Image.open(src / "face00000.png")
    shutil.copy(src / "face00000.png", src / "same_bytes.png")
    first.save(src / "same_pixels.webp", lossless=True)
    first.resize((120, 120), PIL.Image.Resampling.BICUBIC).save(src / "small_jpeg.jpg", quality=80)
    first.resize((480, 480), PIL.Image.Resampling.LANCZOS).save(src / "upscaled.png")
    log = []
    m = fetch_folder(src, tmp_path / "raw", near_duplicate_bits=6, val_fraction=0.5, log=log.append)
    reasons = {r["file"]: r["reason"] for r in m["rejected"]}
    assert reasons["same_bytes.png"] == reasons["same_pixels.webp"] == "duplicate of face00000 (identical pixels)"
    assert reasons["small_jpeg.jpg"].startswith("duplicate of face00000 (near: difference hashes")
    assert reasons["upscaled.png"].startswith("duplicate of face00000 (near")
    assert len(reasons) == 4 and m["counts"] == {"files": 12, "images": 8, "rejected": 4, "duplicates": 4}
    assert "rejected small_jpeg.jpg: duplicate of face00000" in "\n".join(log)
    meta = json.loads((tmp_path / "raw" / METADATA).read_text())
    assert sorted(meta) == [f"face{i:05d}" for i in range(8)]


def test_subject_folder_drops_duplicates_and_a_path_as_source_is_refused(tmp_path):
    from tasks.config.typed import ConfigError
    from tasks.faces.config import FetchFacesConfig

    src = tmp_path / "me"
    src.mkdir()
    rng = np.random.default_rng(0)
    one, two = (PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2))
    one.save(src / "a.png"), one.save(src / "b.png"), two.save(src / "c.png")
    cfg = stage_config(PrepareSubjectConfig, "prepare_subject", source="folder", folder=str(src), landmarks="dlib")
    fetch_subject_task.fn(str(tmp_path / "raw"), cfg, {})
    m = read_manifest(tmp_path / "raw")
    assert m["rejected"] == [{"key": "b", "file": "b.png", "reason": "duplicate of a (identical pixels)"}]
    assert m["counts"]["images"] == 2
    with pytest.raises(
        ConfigError, match="fetch_faces.source must be one of synthetic, ffhq, folder.*fetch_faces.folder"
    ):
        stage_config(FetchFacesConfig, "fetch_faces", source=str(src))


def test_exif_orientation_is_applied(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    img = PIL.Image.new("RGB", (60, 40), (200, 10, 10))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(src / "rotated.jpg", exif=exif)
    fetch_folder(src, tmp_path / "raw", near_duplicate_bits=6, log=lambda s: None)
    meta = json.loads((tmp_path / "raw" / METADATA).read_text())
    assert meta["rotated"]["in_the_wild"]["pixel_size"] == [40, 60]


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_does(tmp_path):
    raw = tmp_path / "raw"
    fetch_synthetic(
        raw, num_images=10, num_identities=3, seed=1, image_size=160, val_fraction=0.0, workers=1, progress=False
    )
    items, _ = items_from_raw(raw, "metadata")
    cfg = AlignConfig("metadata", 64, 256, True, 10, 1)
    whole = align_to_shards(items, tmp_path / "whole", cfg, shard_size=4, workers=1, params={}, progress=False)
    assert whole["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]

    # A killed run: two shards finished, the third half-written, no manifest.
    part = tmp_path / "part"
    align_to_shards(items, part, cfg, shard_size=4, workers=1, params={}, progress=False)
    (part / "manifest.json").unlink()
    (part / "train-000002.tar").rename(part / "train-000002.tar.tmp")
    (part / ".progress").mkdir()
    for name in ("train-000000.tar", "train-000001.tar"):
        (part / ".progress" / f"{name}.json").write_text(
            json.dumps({"fingerprint": None, "split": "train", "count": 0, "used": [], "rejected": []})
        )
    # Progress records need the real fingerprints: recreate them the way a run writes them.
    from tasks.faces.work import plan_shards, shard_fingerprint
    from tasks.tracking.identity import code_identity

    base = json.dumps({"cfg": cfg.__dict__, "code": code_identity(), "shard_size": 4}, sort_keys=True)
    for split, idx, its in plan_shards(items, 4)[:2]:
        name = f"{split}-{idx:06d}.tar"
        (part / ".progress" / f"{name}.json").write_text(
            json.dumps(
                {
                    "fingerprint": shard_fingerprint(base, its),
                    "split": split,
                    "count": len(its),
                    "used": [{"key": i.key, "file": i.info["file"]} for i in its],
                    "rejected": [],
                }
            )
        )
    log = []
    resumed = align_to_shards(items, part, cfg, shard_size=4, workers=1, params={}, progress=False, log=log.append)
    assert "2 already finished, 1 to do" in log[0]
    assert not list(part.glob("*.tmp")) and not (part / ".progress").exists()
    for name in whole["all_shards"]:
        assert (part / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert resumed["fingerprint"] == whole["fingerprint"]
    # Other params: nothing is reused.
    log.clear()
    align_to_shards(
        items,
        part,
        AlignConfig("metadata", 32, 256, True, 10, 1),
        shard_size=4,
        workers=1,
        params={},
        progress=False,
        log=log.append,
    )
    assert "0 already finished, 3 to do" in log[0]


def test_synthetic_is_deterministic_and_the_subject_is_held_out(tmp_path):
    a = fetch_synthetic(
        tmp_path / "a", num_images=4, num_identities=2, seed=5, image_size=96, workers=1, progress=False
    )
    fetch_synthetic(tmp_path / "b", num_images=4, num_identities=2, seed=5, image_size=96, workers=1, progress=False)
    assert (tmp_path / "a" / METADATA).read_bytes() == (tmp_path / "b" / METADATA).read_bytes()
    assert a["identities"] == ["base-000", "base-001"]
    subject = synthetic.subject_identity(5).vector()
    for i in range(50):
        assert np.abs(synthetic.base_identity(5, i).vector() - subject).max() > 1e-3


def test_subject_report_warns_below_min_photos(tmp_path):
    syn = {"num_photos": 2, "seed": 0, "image_size": 160, "face_scale": [20, 30], "max_rotation": 20}
    fetch_subject_task.fn(
        str(tmp_path / "raw"),
        stage_config(PrepareSubjectConfig, "prepare_subject", source="synthetic", synthetic=syn, workers=1),
        {},
    )
    meta = json.loads((tmp_path / "raw" / METADATA).read_text())
    assert {e["metadata"]["identity"] for e in meta.values()} == {"subject"}
    align_faces_task.fn(
        str(tmp_path / "raw"),
        str(tmp_path / "out"),
        AlignFacesConfig(landmarks="metadata", **ALIGN),
        record={},
        list_used=True,
    )
    report = subject_report_task.fn(str(tmp_path / "out"), min_photos=3)
    assert len(report["used"]) == 2 and report["rejected"] == []
    assert "fewer than 3" in report["warning"]
    assert read_manifest(tmp_path / "out")["report"] == report


def test_face_alignment_without_weights_names_the_files(tmp_path, monkeypatch):
    from tasks.faces.landmarks import FanLandmarks

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as exc:
        FanLandmarks("cpu")
    msg = str(exc.value)
    assert "2DFAN4-11f355bf06.pth.tar" in msg and "s3fd-619a316812.pth" in msg
    assert str(tmp_path / "th" / "hub" / "checkpoints") in msg

"""landmarks: face_alignment end to end, offline: face-alignment's own S3FD and 2D-FAN-4, built with
random weights and saved where the library loads them ($TORCH_HOME/hub/checkpoints), run through the
align_faces stage's code on photos shipped by packages.

Random weights find random faces, so the detector's heads are set by hand: only its coarsest level
(stride 128, 512-px anchors, box regression zeroed) says "face", everywhere. On a 72-96 px high
picture that is one face when it is 96 px wide and two when it is 288 px wide (anchors 384 px apart
survive non-maximum suppression). A real detector finds nothing on a plain wall; this one fires
everywhere, so the wall's boxes are dropped after the real detector has run on it. FAN runs as
built (without face-alignment's mirrored second pass, and its numba post-processing runs as
plain Python): nearly all of the time goes there, 50 GFLOP per face.
"""

import io
import json
import logging
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tasks.faces import landmarks
from tasks.faces.aligning import align_faces
from tasks.faces.config import AlignFacesConfig
from tasks.faces.fetch import fetch_folder
from tasks.faces.landmarks import FA_WEIGHTS, FanLandmarks, face_size
from tasks.shards.dataset import read_manifest

FAN_FILE, S3FD_FILE = "2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth"
FIRING_LEVEL = "conv7_2"  # S3FD's coarsest prediction level
ALIGN = dict(
    landmarks="face_alignment",
    output_size=64,
    transform_size=128,
    enable_padding=True,
    min_face_size=10,
    shard_size=8,
    workers=1,
    device="cpu",
    batch_size=4,
    dlib_upsample=1,
)


def random_detector():
    """S3FD with random features whose heads fire only at FIRING_LEVEL, boxes = its anchors."""
    from face_alignment.detection.sfd.net_s3fd import s3fd

    net = s3fd()
    with torch.no_grad():
        for name, conv in net.named_children():
            if name.endswith("_mbox_conf"):  # last channel: face; the others: background
                conv.weight.zero_()
                conv.bias.fill_(0.0)
                conv.bias[-1] = 10.0 if name.startswith(FIRING_LEVEL) else -10.0
            elif name == f"{FIRING_LEVEL}_mbox_loc":
                conv.weight.zero_()
                conv.bias.zero_()
    return net


def place_random_weights(folder: Path) -> None:
    """State dicts under the file names face-alignment 1.5.0 loads (both are plain state dicts:
    FAN through torch.load + load_state_dict, S3FD through torch.hub.load_state_dict_from_url)."""
    from face_alignment.models import FAN

    assert set(FA_WEIGHTS) == {FAN_FILE, S3FD_FILE}
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), folder / FAN_FILE)
    torch.save(random_detector().state_dict(), folder / S3FD_FILE)


def write_photos(folder: Path) -> None:
    """hopper.png 96x96 (alone in its size), pair.png 384x96 (astronaut and Hopper: two faces) and
    wall.png 384x96 (none): equal sizes, so those two go through the detector together."""
    import matplotlib
    from skimage import data

    folder.mkdir()
    hopper = PIL.Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    hopper = hopper.convert("RGB").crop((0, 0, 512, 512)).resize((96, 96), PIL.Image.LANCZOS)
    astronaut = PIL.Image.fromarray(data.astronaut()).resize((96, 96), PIL.Image.LANCZOS)
    pair = PIL.Image.new("RGB", (384, 96), (128, 128, 128))
    pair.paste(astronaut, (0, 0))
    pair.paste(hopper, (288, 0))
    hopper.save(folder / "hopper.png")
    pair.save(folder / "pair.png")
    PIL.Image.new("RGB", (384, 96), (90, 120, 60)).save(folder / "wall.png")


def plain(image: np.ndarray) -> bool:
    """One colour everywhere (a wall); image HxWx3."""
    return bool((image == image[:1, :1]).all())


def spy(monkeypatch) -> dict[str, list]:
    """Record the detector's batches and boxes (dropping those on walls), the boxes FAN gets, and
    what FanLandmarks.batch returns."""
    from face_alignment import FaceAlignment
    from face_alignment.detection.sfd.sfd_detector import SFDDetector

    log: dict[str, list] = {"detector": [], "fan": [], "batch": []}
    detect, fan_points, batch = (
        SFDDetector.detect_from_batch,
        FaceAlignment.get_landmarks_from_image,
        FanLandmarks.batch,
    )

    def detect_from_batch(self, images):  # B x 3 x H x W
        found = [[] if plain(im.permute(1, 2, 0).numpy()) else b for im, b in zip(images, detect(self, images))]
        log["detector"].append((tuple(images.shape), found))
        return found

    def get_landmarks_from_image(self, image, detected_faces=None, **kwargs):
        log["fan"].append((image.shape, np.array(detected_faces)))
        return fan_points(self, image, detected_faces, **kwargs)

    def fan_batch(self, images):
        out = batch(self, images)
        log["batch"].append((images, out))
        return out

    monkeypatch.setattr(SFDDetector, "detect_from_batch", detect_from_batch)
    monkeypatch.setattr(FaceAlignment, "get_landmarks_from_image", get_landmarks_from_image)
    monkeypatch.setattr(FanLandmarks, "batch", fan_batch)
    return log


def no_flip(monkeypatch) -> None:
    """face-alignment also runs FAN on each crop mirrored (flip_input=True): its own code, and twice
    this test's time."""
    init = FanLandmarks.__init__

    def init_no_flip(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.fa.flip_input = False

    monkeypatch.setattr(FanLandmarks, "__init__", init_no_flip)


def no_numba_compile(monkeypatch) -> None:
    """face-alignment turns FAN's heatmaps into points with two numba functions that compile on
    first use in every process (21 s of CPU here); their Python originals compute the same."""
    import face_alignment.utils as fa_utils

    for name in ("transform_np", "_get_preds_fromhm"):
        monkeypatch.setattr(fa_utils, name, getattr(fa_utils, name).py_func)


def shard_samples(folder: Path) -> dict[str, tuple[PIL.Image.Image, dict]]:
    samples: dict[str, dict] = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    return {k: (PIL.Image.open(io.BytesIO(s["png"])), json.loads(s["json"])) for k, s in samples.items()}


def test_align_faces_with_face_alignment_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(landmarks, "DETECT_MAX_SIDE", 288)  # the 384-px photos are searched at 288x72
    place_random_weights(tmp_path / "torch" / "hub" / "checkpoints")
    write_photos(tmp_path / "photos")
    fetch_folder(tmp_path / "photos", tmp_path / "raw", near_duplicate_bits=6, val_fraction=0.0, log=lambda s: None)
    log = spy(monkeypatch)
    no_flip(monkeypatch)
    no_numba_compile(monkeypatch)

    m = align_faces(
        str(tmp_path / "raw"),
        str(tmp_path / "aligned"),
        AlignFacesConfig(**ALIGN),
        record={},
        log=logging.getLogger("test"),
    )

    # One detector pass per size (the pair and the wall together, scaled down); boxes back in the
    # photo's pixels for FAN; FAN never runs on the wall.
    detected = dict(log["detector"])
    assert sorted(detected) == [(1, 3, 96, 96), (2, 3, 72, 288)]
    assert [len(b) for b in detected[2, 3, 72, 288]] == [2, 0] and len(detected[1, 3, 96, 96][0]) == 1
    fan_boxes = dict(log["fan"])
    assert sorted(fan_boxes) == [(96, 96, 3), (96, 384, 3)]
    np.testing.assert_allclose(fan_boxes[96, 96, 3], np.array(detected[1, 3, 96, 96][0]))
    to_photo = np.array([4 / 3] * 4 + [1])  # x0, y0, x1, y1 from 288x72 to 384x96; the score as is
    np.testing.assert_allclose(fan_boxes[96, 384, 3], np.array(detected[2, 3, 72, 288][0]) * to_photo)

    [(images, faces)] = log["batch"]
    found = sorted((im.shape, plain(im), len(fs)) for im, fs in zip(images, faces))
    assert found == [((96, 96, 3), False, 1), ((96, 384, 3), False, 2), ((96, 384, 3), True, 0)]
    for face in (f for fs in faces for f in fs):
        assert face.shape == (68, 2) and face.dtype == np.float64 and np.isfinite(face).all()
    pair_faces = next(fs for fs in faces if len(fs) == 2)
    assert not np.array_equal(*pair_faces)

    assert m["counts"] == {"inputs": 3, "written": 2, "rejected": 1, "train": 2}
    assert [(r["file"], r["reason"]) for r in m["rejected"]] == [("in-the-wild-images/wall.png", "no face detected")]
    assert read_manifest(tmp_path / "aligned")["rejected"] == m["rejected"]
    samples = {meta["file"]: (img, meta) for img, meta in shard_samples(tmp_path / "aligned").values()}
    assert sorted(samples) == ["in-the-wild-images/hopper.png", "in-the-wild-images/pair.png"]
    for img, meta in samples.values():
        assert img.size == (64, 64) and img.mode == "RGB"
        assert np.asarray(meta["landmarks"]).shape == (68, 2)
    # Of the pair's two faces, the larger was aligned.
    largest = max(pair_faces, key=face_size)
    np.testing.assert_allclose(samples["in-the-wild-images/pair.png"][1]["landmarks"], np.round(largest, 2))


def test_no_weights_and_no_network_names_the_files(tmp_path, monkeypatch):
    """Not marked offline: face-alignment tries to download, and the URL error becomes one that
    says which files to place where."""
    import face_alignment.utils
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FACEDIFF_OFFLINE", raising=False)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)  # S3FD's loader
    monkeypatch.setattr(face_alignment.utils, "download_url_to_file", no_network)  # FAN's loader
    with pytest.raises(FileNotFoundError, match="could not fetch its weights") as exc:
        FanLandmarks("cpu")
    assert FAN_FILE in str(exc.value) and S3FD_FILE in str(exc.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(exc.value)


def test_a_weight_file_that_is_not_one_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for name in FA_WEIGHTS:  # what a download that got a sign-in page leaves behind
        (folder / name).write_text("<html>sign in</html>")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not load its weights") as exc:
        FanLandmarks("cpu")
    assert str(folder) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for name in FA_WEIGHTS:
        (folder / name).write_bytes(b"")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(RuntimeError, match="torch sees no GPU here: set device: cpu"):
        FanLandmarks("cuda")

"""68-point landmark sources: dlib (offline, CPU) and face-alignment (FAN; weights from the torch hub).

Both return every face found as a (68, 2) float array in dlib's layout; `pick_face` keeps the
largest and applies the minimum size. Nothing here imports prefect, and torch is imported only
when the face-alignment source is used, so dlib workers spawn fast.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import PIL.Image

DLIB_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
# face-alignment 1.5.0's files for LandmarksType.TWO_D with the default 'sfd' detector.
FA_WEIGHTS = {
    "2DFAN4-11f355bf06.pth.tar": "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    "s3fd-619a316812.pth": "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}


class NoFace(ValueError):
    """No usable face in the photo; the message is the reason recorded in the manifest."""


def face_size(landmarks: np.ndarray) -> float:
    """Size of a face in source pixels: the larger side of its landmarks' bounding box."""
    span = landmarks.max(axis=0) - landmarks.min(axis=0)
    return float(span.max())


def pick_face(faces: list[np.ndarray], min_face_size: float) -> np.ndarray:
    """The largest face; NoFace when there is none or it is below `min_face_size` pixels."""
    if not faces:
        raise NoFace("no face detected")
    best = max(faces, key=face_size)
    size = face_size(best)
    if size < min_face_size:
        raise NoFace(f"face too small: {size:.0f} px < min_face_size {min_face_size:g} px")
    return best


# --- dlib ------------------------------------------------------------------------------------


def dlib_predictor_path() -> Path:
    """The 68-point model shipped by `face-recognition-models` (found without importing it: its
    __init__ needs pkg_resources, which recent setuptools no longer provides)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "landmarks 'dlib' needs the package face-recognition-models (pip install face-recognition-models==0.3.0)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / DLIB_PREDICTOR
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall face-recognition-models")
    return path


class DlibLandmarks:
    """HOG frontal face detector + the 68-point shape predictor (the model FFHQ's landmarks came from)."""

    def __init__(self, upsample: int = 1):
        import dlib

        self.upsample = int(upsample)
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_predictor_path()))

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        rgb = np.ascontiguousarray(rgb)
        faces = []
        for rect in self.detector(rgb, self.upsample):
            shape = self.predictor(rgb, rect)
            faces.append(np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64))
        return faces


# --- face-alignment (FAN) -----------------------------------------------------------------------

# S3FD's cost and memory grow with the pixels it is given: a 12 MP phone photo costs about 8 TFLOP
# and 3 GB per activation map, times the photos in a batch. It therefore looks for faces on a copy
# whose longer side is at most this (it still finds faces of about 16 px there); FAN then crops
# each face from the full-resolution photo, so the landmarks keep the photo's precision.
DETECT_MAX_SIDE = 1024


def torch_hub_checkpoints() -> Path:
    """Where face-alignment looks for its weights: torch.hub.get_dir()/checkpoints, by torch's rule
    ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch), without importing torch."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch")
    return Path(os.path.expanduser(os.environ.get("TORCH_HOME", default))) / "hub" / "checkpoints"


def check_face_alignment_weights(offline: bool | None = None) -> Path:
    """Fail with a message naming each missing file and its folder, before face-alignment reaches
    for the network (offline: HF_HUB_OFFLINE=1 or FACEDIFF_OFFLINE=1). Returns the folder."""
    folder = torch_hub_checkpoints()
    missing = [name for name in FA_WEIGHTS if not (folder / name).is_file()]
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
            "FACEDIFF_OFFLINE", ""
        ) not in ("", "0")
    if missing and offline:
        lines = "\n".join(f"  {folder / name}   (from {FA_WEIGHTS[name]})" for name in missing)
        raise FileNotFoundError(
            f"landmarks 'face_alignment' needs its weights and this machine is offline; place these files:\n"
            f"{lines}\n(the folder is $TORCH_HOME/hub/checkpoints; or use landmarks: dlib, which works offline)"
        )
    return folder


class FanLandmarks:
    """face-alignment's FaceAlignment(LandmarksType.TWO_D): S3FD detector + 2D-FAN-4.

    Runs in the main process (torch uses the cores itself). Photos of equal size go through the
    detector together, `batch_size` at a time (on copies scaled down to DETECT_MAX_SIDE); FAN then
    runs on each photo's faces, up to `batch_size` crops per forward pass.
    """

    def __init__(self, device: str = "cpu", batch_size: int = 8):
        folder = check_face_alignment_weights()
        import face_alignment
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"landmarks 'face_alignment' asks for device {device!r} but torch sees no GPU here: set device: cpu"
            )
        self.torch = torch
        self.batch_size = max(1, int(batch_size))
        try:
            self.fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D,
                device=device,
                compile=device != "cpu",  # torch.compile costs ~77 s on CPU: never worth it there
                max_batch_size=self.batch_size,
            )
        except OSError as exc:  # urllib errors are OSErrors: no network and no weights
            missing = [n for n in FA_WEIGHTS if not (folder / n).is_file()]
            raise FileNotFoundError(
                f"face-alignment could not fetch its weights ({exc}); place {missing} in {folder}"
            ) from exc
        except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
            # torch.load / load_state_dict on a truncated file, an HTML page saved under the name, or
            # another model's weights: their own messages name neither the file nor the fix.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RuntimeError(
                f"face-alignment could not load its weights from {folder} ({type(exc).__name__}: {first_line}); "
                f"{' and '.join(FA_WEIGHTS)} there must be the complete original files: download them again"
            ) from exc

    def batch(self, images: list[np.ndarray]) -> list[list[np.ndarray]]:
        """All faces of each image (RGB uint8 HxWx3 arrays), each a (68, 2) float64 array."""
        out: list[list[np.ndarray]] = [[] for _ in images]
        for chunk in _equal_size_chunks(images, self.batch_size):
            boxes = self._detect([images[i] for i in chunk])
            for i, image_boxes in zip(chunk, boxes):
                out[i] = self._landmarks(images[i], image_boxes)
        return out

    def _detect(self, images: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Face boxes (x0, y0, x1, y1, score) in each photo's pixels: one detector pass over copies
        whose longer side is at most DETECT_MAX_SIDE (the photos are of one size)."""
        h, w = images[0].shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != (w, h):
            images = [np.asarray(PIL.Image.fromarray(im).resize(size, PIL.Image.BILINEAR)) for im in images]
        batch = self.torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # B x 3 x H x W, uint8
        back = np.array([w / size[0], h / size[1], w / size[0], h / size[1], 1.0])
        return [
            [np.asarray(b, dtype=np.float64) * back for b in found]
            for found in self.fa.face_detector.detect_from_batch(batch)
        ]

    def _landmarks(self, image: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        """FAN's 68 points for each box (face-alignment crops each box from the full photo)."""
        if not boxes:  # face-alignment would warn "No faces were detected." for every such photo
            return []
        faces = self.fa.get_landmarks_from_image(image, detected_faces=boxes)
        return [np.asarray(f, dtype=np.float64)[:, :2] for f in faces]


def _equal_size_chunks(images: list[np.ndarray], size: int) -> list[list[int]]:
    """Indices of `images`, grouped by shape (a batch is one tensor), `size` at most per group."""
    by_shape: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(im.shape, []).append(i)
    return [idx[start : start + size] for idx in by_shape.values() for start in range(0, len(idx), size)]

"""68-point landmark sources: dlib (offline, CPU) and face-alignment (FAN; weights from the torch hub).

Both return every face found as a (68, 2) float array in dlib's layout; `pick_face` keeps the
largest and applies the minimum size. Nothing here imports prefect, and torch is imported only
when the face-alignment source is used, so dlib workers spawn fast.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

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
        raise RuntimeError("landmarks 'dlib' needs the package face-recognition-models "
                           "(pip install face-recognition-models==0.3.0)")
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

def torch_hub_checkpoints() -> Path:
    """Where face-alignment looks for its weights: $TORCH_HOME/hub/checkpoints (torch's rule)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def check_face_alignment_weights(offline: bool | None = None) -> Path:
    """Fail with a message naming each missing file and its folder, before face-alignment reaches
    for the network (offline: HF_HUB_OFFLINE=1 or no route out). Returns the folder."""
    folder = torch_hub_checkpoints()
    missing = [name for name in FA_WEIGHTS if not (folder / name).is_file()]
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or \
            os.environ.get("FACEDIFF_OFFLINE", "") not in ("", "0")
    if missing and offline:
        lines = "\n".join(f"  {folder / name}   (from {FA_WEIGHTS[name]})" for name in missing)
        raise FileNotFoundError(
            f"landmarks 'face_alignment' needs its weights and this machine is offline; place these files:\n"
            f"{lines}\n(the folder is $TORCH_HOME/hub/checkpoints; or use landmarks: dlib, which works offline)")
    return folder


class FanLandmarks:
    """face-alignment's FaceAlignment(LandmarksType.TWO_D): S3FD detector + 2D-FAN-4.

    Run in the main process (torch uses the cores itself); photos of the same size are batched
    through `get_landmarks_from_batch`.
    """

    def __init__(self, device: str = "cpu", batch_size: int = 8):
        check_face_alignment_weights()
        import face_alignment
        import torch

        self.torch = torch
        self.batch_size = max(1, int(batch_size))
        try:
            self.fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device,
                compile=device != "cpu",  # torch.compile costs ~77 s on CPU: never worth it there
                max_batch_size=self.batch_size)
        except OSError as exc:  # urllib errors are OSErrors: no network and no weights
            missing = [n for n in FA_WEIGHTS if not (torch_hub_checkpoints() / n).is_file()]
            raise FileNotFoundError(
                f"face-alignment could not fetch its weights ({exc}); place {missing} in "
                f"{torch_hub_checkpoints()}") from exc

    def batch(self, images: list[np.ndarray]) -> list[list[np.ndarray]]:
        """All faces of each image (RGB uint8 arrays), batching images of equal size."""
        out: list[list[np.ndarray] | None] = [None] * len(images)
        by_size: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.shape, []).append(i)
        for idx in by_size.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                if len(chunk) == 1:
                    res = self.fa.get_landmarks_from_image(images[chunk[0]])
                    results = [res]
                else:
                    t = self.torch.from_numpy(np.stack([images[i] for i in chunk])).permute(0, 3, 1, 2)
                    results = self.fa.get_landmarks_from_batch(t) or [None] * len(chunk)
                for i, res in zip(chunk, results):
                    out[i] = [] if res is None or len(res) == 0 else _split_faces(res)
        return out


def _split_faces(res) -> list[np.ndarray]:
    """face-alignment returns a list of (68, 2) arrays per image, or one (68*k, 2) array in batches."""
    if isinstance(res, np.ndarray):
        res = [res[i:i + 68] for i in range(0, len(res), 68)]
    return [np.asarray(f, dtype=np.float64)[:, :2] for f in res if len(f) == 68]

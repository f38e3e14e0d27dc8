"""Offline face features with dlib: one preprocessing for every image, real or generated.

image (any size, uint8 RGB) -> Lanczos resize to `upscale_to` px (the detector misses faces below
~80 px, and 64 px samples are the default) -> HOG frontal detector (`upsample` pyramid levels) ->
the largest face -> 68-point shape predictor -> aligned `chip_size` px chip (dlib's get_face_chip,
`chip_padding`) -> the 128-d ResNet descriptor (`num_jitters` random re-crops averaged; 0 = none).

The model files are the ones `face-recognition-models` ships, located without importing it (see
tasks/faces/landmarks.py). No prefect, no torch: cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.config.typed import StageConfig
from tasks.faces.landmarks import dlib_predictor_path
from tasks.processes.pool import resolve_workers, spawn_executor

DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
DESCRIPTOR_DIM = 128


@dataclass(frozen=True)
class FeatureConfig(StageConfig):
    upscale_to: int  # every image is Lanczos-resized to this square size before detection
    upsample: int  # HOG detector pyramid upsampling
    chip_size: int  # aligned face chip fed to the descriptor network (dlib's model wants 150)
    chip_padding: float  # context around the face in the chip (dlib's default 0.25)
    num_jitters: int  # descriptor averaged over this many jittered chips (0 or 1: none)
    workers: int = 0  # processes describing images (dlib runs on one core); 0 = all cores

    def __post_init__(self):
        if self.upscale_to < 32:
            raise ValueError(f"upscale_to must be >= 32 px, got {self.upscale_to}")
        if self.upsample < 0 or self.num_jitters < 0:
            raise ValueError("upsample and num_jitters must be >= 0")


def descriptor_model_path() -> Path:
    """dlib's 128-d face descriptor network, next to the 68-point predictor in face-recognition-models."""
    path = dlib_predictor_path().parent / DESCRIPTOR_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall face-recognition-models==0.3.0")
    return path


@dataclass
class FaceFeatures:
    """Descriptors of the images in which a face was found, and which those were."""

    descriptors: np.ndarray  # (n_detected, 128) float64
    detected: np.ndarray  # (n_images,) bool

    @property
    def detect_rate(self) -> float:
        return float(self.detected.mean()) if len(self.detected) else 0.0


_WORKER_EXTRACTOR: DlibFaceExtractor | None = None


def _init_worker(cfg: FeatureConfig) -> None:
    global _WORKER_EXTRACTOR
    _WORKER_EXTRACTOR = DlibFaceExtractor(replace(cfg, workers=1))


def _describe_in_worker(rgb: np.ndarray) -> np.ndarray | None:
    return _WORKER_EXTRACTOR.describe_prepared(rgb)


class DlibFaceExtractor:
    """Callable: list of uint8 RGB images -> FaceFeatures. Deterministic (dlib jitters with a fixed seed).

    dlib's detector and descriptor use one core, so with `workers` > 1 the images are described in a
    pool of spawned processes (created on the first call, kept until `close()`); the results are the
    same descriptors in the same order as in one process.
    """

    def __init__(self, cfg: FeatureConfig):
        import dlib

        self.cfg = cfg
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_predictor_path()))
        self.encoder = dlib.face_recognition_model_v1(str(descriptor_model_path()))
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> DlibFaceExtractor:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _map(self, prepared: list[np.ndarray]) -> list[np.ndarray | None]:
        workers = resolve_workers(self.cfg.workers)
        if workers == 1 or len(prepared) < 2 * workers:
            return [self.describe_prepared(rgb) for rgb in prepared]
        if self._pool is None:
            self._pool = spawn_executor(workers, initializer=_init_worker, initargs=(self.cfg,))
        return list(self._pool.map(_describe_in_worker, prepared, chunksize=max(1, len(prepared) // (4 * workers))))

    def prepare(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """The one resize every image gets: Lanczos to upscale_to x upscale_to, uint8 RGB."""
        im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        im = im.convert("RGB")
        size = self.cfg.upscale_to
        if im.size != (size, size):
            im = im.resize((size, size), Image.LANCZOS)
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))

    def describe_one(self, image: np.ndarray | Image.Image) -> np.ndarray | None:
        """The largest face's 128-d descriptor, or None when no face is detected."""
        return self.describe_prepared(self.prepare(image))

    def describe_prepared(self, rgb: np.ndarray) -> np.ndarray | None:
        """describe_one after `prepare`."""
        rects = list(self.detector(rgb, self.cfg.upsample))
        if not rects:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = self.predictor(rgb, rect)
        chip = self._dlib.get_face_chip(rgb, shape, size=self.cfg.chip_size, padding=self.cfg.chip_padding)
        desc = self.encoder.compute_face_descriptor(chip, max(self.cfg.num_jitters, 0))
        return np.asarray(desc, dtype=np.float64)

    def __call__(self, images) -> FaceFeatures:
        descs, detected = [], []
        for d in self._map([self.prepare(image) for image in images]):
            detected.append(d is not None)
            if d is not None:
                descs.append(d)
        arr = np.stack(descs) if descs else np.zeros((0, DESCRIPTOR_DIM))
        return FaceFeatures(descriptors=arr, detected=np.asarray(detected, dtype=bool))

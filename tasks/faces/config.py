"""Typed configs of the face stages (fetch_faces, align_faces, prepare_subject); values in params.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config.typed import ConfigError, StageConfig


@dataclass(frozen=True)
class SyntheticFacesConfig(StageConfig):
    num_images: int
    num_identities: int
    seed: int
    image_size: int
    face_scale: list[float]  # inter-ocular distance range in pixels
    max_rotation: float


@dataclass(frozen=True)
class FfhqConfig(StageConfig):
    images: str  # in_the_wild | aligned | thumbnail
    num_images: int | None
    base_url: str | None
    metadata_url: str | None
    metadata_md5: str | None
    metadata_size: int | None
    num_threads: int
    retries: int


@dataclass(frozen=True)
class FetchFacesConfig(StageConfig):
    source: str  # synthetic | ffhq | folder (the photos in `folder`)
    folder: str  # a dvc.yaml dep: adding, removing or changing a photo reruns the stage
    near_duplicate_bits: int  # folder: difference hashes this close are duplicates (tasks/faces/fetch.py)
    val_fraction: float
    workers: int
    synthetic: SyntheticFacesConfig
    ffhq: FfhqConfig

    def __post_init__(self):
        check_source("fetch_faces", self.source, ("synthetic", "ffhq", "folder"))


def check_source(stage: str, source: str, known: tuple[str, ...]) -> None:
    if source not in known:
        raise ConfigError(
            f"{stage}.source must be one of {', '.join(known)}, got {source!r} (your own photos go in "
            f"{stage}.folder, which dvc.yaml tracks, with source: folder)"
        )


@dataclass(frozen=True)
class AlignFacesConfig(StageConfig):
    landmarks: str  # metadata | dlib | face_alignment
    output_size: int
    transform_size: int
    enable_padding: bool
    min_face_size: float
    shard_size: int
    workers: int
    device: str
    batch_size: int
    dlib_upsample: int


@dataclass(frozen=True)
class SyntheticSubjectConfig(StageConfig):
    num_photos: int
    seed: int
    image_size: int
    face_scale: list[float]
    max_rotation: float


# The subject's photos are aligned exactly like align_faces, in one shard.
SUBJECT_SHARD_SIZE = 10_000


@dataclass(frozen=True)
class PrepareSubjectConfig(StageConfig):
    source: str  # synthetic | folder (one person's photos in `folder`)
    folder: str  # a dvc.yaml dep, as fetch_faces.folder
    near_duplicate_bits: int
    synthetic: SyntheticSubjectConfig
    landmarks: str
    output_size: int
    transform_size: int
    enable_padding: bool
    min_face_size: float
    min_photos: int
    workers: int
    device: str
    batch_size: int
    dlib_upsample: int

    def __post_init__(self):
        check_source("prepare_subject", self.source, ("synthetic", "folder"))
        if self.source != "synthetic" and self.landmarks == "metadata":
            raise ValueError(
                "prepare_subject: a folder of photos has no landmarks in metadata: "
                "use landmarks: dlib or face_alignment"
            )

    def align(self) -> AlignFacesConfig:
        """The alignment settings, as align_faces takes them."""
        return AlignFacesConfig(
            landmarks=self.landmarks,
            output_size=self.output_size,
            transform_size=self.transform_size,
            enable_padding=self.enable_padding,
            min_face_size=self.min_face_size,
            shard_size=SUBJECT_SHARD_SIZE,
            workers=self.workers,
            device=self.device,
            batch_size=self.batch_size,
            dlib_upsample=self.dlib_upsample,
        )

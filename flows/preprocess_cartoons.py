"""Flow for DVC stage preprocess_cartoons: see tasks/cartoon/preprocess.py."""
from prefect import flow

from flows._stage import run_stage
from tasks.cartoon.preprocess import preprocess_cartoons as preprocess


@flow(name="preprocess_cartoons")
def preprocess_cartoons(raw_dir: str, out_dir: str, background: list[int] = (255, 255, 255),
                        crop: int = 360, resolution: int = 64, resample: str = "lanczos",
                        image_size: int | None = 500, val_fraction: float = 0.1, shard_size: int = 1000,
                        max_reject_fraction: float = 0.01, workers: int = 0) -> str:
    return preprocess(raw_dir, out_dir, background=background, crop=crop, resolution=resolution,
                      resample=resample, image_size=image_size, val_fraction=val_fraction,
                      shard_size=shard_size, max_reject_fraction=max_reject_fraction, workers=workers)


if __name__ == "__main__":
    run_stage(preprocess_cartoons, "preprocess_cartoons")

"""Flow for DVC stage preprocess_cartoons: see tasks/cartoon/preprocess.py."""

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.cartoon.config import PreprocessCartoonsConfig
from tasks.cartoon.preprocess import preprocess_cartoons as preprocess


@stage_task("preprocess_cartoons")
def preprocess_cartoons_task(raw_dir: str, out_dir: str, config: PreprocessCartoonsConfig) -> str:
    """Validate every (csX.png, csX.csv) pair and write train/val shards; returns the manifest path."""
    return preprocess(raw_dir, out_dir, **config.to_dict())


@flow(name="preprocess_cartoons")
def preprocess_cartoons(raw_dir: str, out_dir: str, params: dict) -> str:
    return preprocess_cartoons_task(
        raw_dir, out_dir, PreprocessCartoonsConfig.from_params(params, "preprocess_cartoons")
    )


if __name__ == "__main__":
    run_stage(preprocess_cartoons, "preprocess_cartoons")

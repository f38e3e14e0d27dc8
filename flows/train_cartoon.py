"""Flow for DVC stage train_cartoon: see tasks/cartoon/train.py (the engine: tasks/training/)."""

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.cartoon.config import TrainCartoonConfig
from tasks.cartoon.train import train_cartoon as train

train_cartoon_task = stage_task("train_cartoon")(train)


@flow(name="train_cartoon")
def train_cartoon(
    shard_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str, metrics_path: str, params: dict
) -> str:
    train_cartoon_task(
        shard_dir,
        model_dir,
        checkpoint_dir,
        live_dir,
        metrics_path,
        TrainCartoonConfig.from_params(params, "train_cartoon"),
    )
    return model_dir


if __name__ == "__main__":
    run_stage(train_cartoon, "train_cartoon")

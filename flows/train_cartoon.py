"""Flow for DVC stage train_cartoon: see tasks/cartoon/train.py (the engine: tasks/training/)."""
from prefect import flow

from flows._stage import run_stage
from tasks.cartoon.train import train_cartoon as train


@flow(name="train_cartoon")
def train_cartoon(shard_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str, metrics_path: str,
                  data: dict | None = None, model: dict | None = None, training: dict | None = None,
                  samples: dict | None = None, num_processes: int = 1) -> str:
    return train(shard_dir, model_dir, checkpoint_dir, live_dir, metrics_path, data=data, model=model,
                 training=training, samples=samples, num_processes=num_processes)


if __name__ == "__main__":
    run_stage(train_cartoon, "train_cartoon")

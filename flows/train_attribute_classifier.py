"""Flow for DVC stage train_attribute_classifier: see tasks/cartoon/classifier.py."""
from prefect import flow

from flows._stage import run_stage
from tasks.cartoon.classifier import train_attribute_classifier as train


@flow(name="train_attribute_classifier")
def train_attribute_classifier(shard_dir: str, model_dir: str, metrics_path: str, resolution: int = 32,
                               channels: list[int] = (16, 32, 64), hidden_dim: int = 256, epochs: int = 4,
                               batch_size: int = 64, learning_rate: float = 2e-3, weight_decay: float = 1e-4,
                               seed: int = 0) -> str:
    return train(shard_dir, model_dir, metrics_path, resolution=resolution, channels=list(channels),
                 hidden_dim=hidden_dim, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                 weight_decay=weight_decay, seed=seed)


if __name__ == "__main__":
    run_stage(train_attribute_classifier, "train_attribute_classifier")

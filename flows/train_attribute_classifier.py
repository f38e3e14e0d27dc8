"""Flow for DVC stage train_attribute_classifier: see tasks/cartoon/classifier.py."""
from prefect import flow

from flows._stage import run_stage
from tasks.cartoon.config import ClassifierConfig
from tasks.cartoon.stages import train_attribute_classifier_task


@flow(name="train_attribute_classifier")
def train_attribute_classifier(shard_dir: str, model_dir: str, metrics_path: str, params: dict) -> str:
    return train_attribute_classifier_task(shard_dir, model_dir, metrics_path,
                                           ClassifierConfig.from_params(params, "train_attribute_classifier"))


if __name__ == "__main__":
    run_stage(train_attribute_classifier, "train_attribute_classifier")

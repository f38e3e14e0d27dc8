"""Flow for DVC stage train_attribute_classifier: see tasks/cartoon/classifier.py."""

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.cartoon.classifier import run_classifier_training
from tasks.cartoon.config import ClassifierConfig

train_attribute_classifier_task = stage_task("train_attribute_classifier")(run_classifier_training)


@flow(name="train_attribute_classifier")
def train_attribute_classifier(shard_dir: str, model_dir: str, metrics_path: str, params: dict) -> str:
    train_attribute_classifier_task(
        shard_dir, model_dir, metrics_path, ClassifierConfig.from_params(params, "train_attribute_classifier")
    )
    return model_dir


if __name__ == "__main__":
    run_stage(train_attribute_classifier, "train_attribute_classifier")

"""What a model folder this project saves holds, read from its files (nothing is loaded).

One answer for everything that looks at a folder: `python -m pipelines.sample` (which kinds it
samples), the model cards (tasks/reporting/model_card.py: which snippet loads it) and the
evaluations (which folder they measured: `folder_identity`).

  lora         a DreamBooth LoRA adapter (ADAPTER_RECORD names its base)
  cartoon      CartoonDiffusionPipeline   }
  ldm          LatentDiffusionPipeline    } model_index.json's class; `code_file` when the folder
  dreambooth   SubjectDiffusionPipeline   } carries its pipeline's code (pipelines.portable)
  pipeline     another diffusers pipeline }
  autoencoder  a single autoencoder (config.json): PatchAutoencoderKL, AutoencoderKL, VQModel
  model        another single model (config.json)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

ADAPTER_RECORD = "dreambooth_adapter.json"  # a DreamBooth adapter's record: base path, base identity, identifier
PIPELINE_KINDS = {
    "CartoonDiffusionPipeline": "cartoon",
    "LatentDiffusionPipeline": "ldm",
    "SubjectDiffusionPipeline": "dreambooth",
}
AUTOENCODERS = ("PatchAutoencoderKL", "AutoencoderKL", "VQModel")
# What a training stage writes into its folder after the model: the model card and its sample grid.
CARD, CARD_GRID = "README.md", "samples.png"


@dataclass(frozen=True)
class ModelFolder:
    kind: str  # lora | cartoon | ldm | dreambooth | pipeline | autoencoder | model
    class_name: str | None  # model_index.json's or config.json's class (None: an adapter)
    code_file: str | None = None  # a portable pipeline folder's code file (`pipeline.py`), when present


def model_folder(model_dir: str | Path) -> ModelFolder:
    """What `model_dir` holds; FileNotFoundError when it is no model folder."""
    model_dir = Path(model_dir)
    if (model_dir / ADAPTER_RECORD).is_file():
        return ModelFolder("lora", None)
    index = model_dir / "model_index.json"
    if index.is_file():
        name = json.loads(index.read_text()).get("_class_name")
        code_file = None
        if isinstance(name, list):  # a portable folder: [code file, class]
            code_file = f"{name[0]}.py" if (model_dir / f"{name[0]}.py").is_file() else None
            name = name[1]
        return ModelFolder(PIPELINE_KINDS.get(name, "pipeline"), name, code_file)
    config = model_dir / "config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("_class_name")
        return ModelFolder("autoencoder" if name in AUTOENCODERS else "model", name)
    raise FileNotFoundError(f"{model_dir} is not a model folder: no model_index.json, config.json or {ADAPTER_RECORD}")


def folder_identity(model_dir: str | Path) -> str:
    """A hash of every file of a model folder but its card (CARD, CARD_GRID): equal for the folder as
    the training stage saved it and as an evaluation measured it, so a card can tell whether an
    evaluation's figures are of this model."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(root).as_posix()
        if rel in (CARD, CARD_GRID):
            continue
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:24]

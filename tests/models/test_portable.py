"""Model folders that load without this project (pipelines/portable.py), and loading through the
project's classes without anything patched into diffusers."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from pipelines import CartoonDiffusionPipeline, LatentDiffusionPipeline, save_portable
from tests.helpers.models import tiny_cartoon_pipeline as tiny_pipeline
from tests.helpers.models import tiny_latent_pipeline as _pipeline

# Run in a fresh interpreter that cannot see the project: -I (no PYTHONPATH, no cwd on sys.path),
# -S (no .pth files: the project's editable install is one) and only the venv's site-packages.
CHILD = """
import importlib.util, sys
sys.path.append({site!r})
assert importlib.util.find_spec("pipelines") is None and importlib.util.find_spec("tasks") is None, sys.path
import numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("model", trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
np.save("images.npy", images)
print(type(pipe).__name__, type(pipe).__module__)
"""


def _images(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images


def test_a_portable_folder_loads_with_diffusers_alone(tmp_path):
    pipe = _pipeline(tmp_path)
    code = save_portable(pipe, tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LatentDiffusionPipeline"] and code.name == "pipeline.py"
    # The saved code imports nothing of the project's.
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(ast.parse(code.read_text()))
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    assert not any(m.split(".")[0] in ("pipelines", "tasks", "flows") for m in imported), imported
    expected = _images(pipe)

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "model", elsewhere / "model")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # dynamic modules go to a fresh cache
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD.format(site=sysconfig.get_paths()["purelib"])],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "LatentDiffusionPipeline" and "pipelines" not in proc.stdout
    # Same weights, code and seed; another process may sum in another order (threads): ~1e-6 apart.
    np.testing.assert_allclose(np.load(elsewhere / "images.npy"), expected, atol=1e-5, rtol=0)


def test_the_project_class_loads_a_portable_folder_as_itself(tmp_path):
    pipe = _pipeline(tmp_path)
    save_portable(pipe, tmp_path / "model")
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "model")  # no trust_remote_code: no code run
    assert type(loaded) is LatentDiffusionPipeline
    np.testing.assert_array_equal(_images(loaded), _images(pipe))


def test_without_trust_remote_code_diffusers_refuses_the_folder_code(tmp_path):
    from diffusers import DiffusionPipeline

    save_portable(_pipeline(tmp_path), tmp_path / "model")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path / "model")


def test_a_project_component_travels_with_its_code(tmp_path):
    from diffusers import DiffusionPipeline

    pipe = tiny_pipeline("class_embedding")
    assert isinstance(pipe, CartoonDiffusionPipeline) and isinstance(pipe.scheduler, DDPMScheduler)
    save_portable(pipe, tmp_path / "cartoon")
    index = json.loads((tmp_path / "cartoon" / "model_index.json").read_text())
    assert index["tau"] == ["cartoon", "AttributeProjection"]
    code = (tmp_path / "cartoon" / "tau" / "cartoon.py").read_text()
    assert "class AttributeProjection" in code and not any(
        m.split(".")[0] == "pipelines"
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.ImportFrom)
        for m in [n.module or ""]
    )
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "cartoon", trust_remote_code=True)
    assert type(loaded.tau).__name__ == "AttributeProjection" and type(loaded.tau).__module__ != "pipelines.cartoon"
    for a, b in zip(loaded.tau.state_dict().values(), pipe.tau.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Foreign(ModelMixin, ConfigMixin):  # a component class from outside diffusers and the project
    @register_to_config
    def __init__(self, width: int = 2):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)


def test_a_component_from_elsewhere_is_not_portable(tmp_path):
    pipe = _pipeline(tmp_path)
    pipe.register_modules(vae=_Foreign())
    with pytest.raises(ValueError, match=r"components \['vae'\] come from \['tests'\]"):
        save_portable(pipe, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_loading_patches_nothing_into_diffusers():
    import diffusers

    import pipelines  # noqa: F401

    assert not hasattr(diffusers, "LatentDiffusionPipeline") and not hasattr(diffusers, "CartoonDiffusionPipeline")

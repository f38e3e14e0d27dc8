"""The README's Python examples, exactly as written, on tiny models saved where they look."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from pipelines import AttributeProjection, CartoonDiffusionPipeline, save_portable
from tasks.synthetic.cartoons import CARTOONSET_ATTRIBUTES
from tests.test_ldm import _pipeline

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def _tiny_cartoon_model(out: Path) -> None:
    """Cartoon Set's 18 attributes (so the README's names exist), a tiny class-embedding UNet."""
    torch.manual_seed(0)
    names, counts = zip(*CARTOONSET_ATTRIBUTES)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       class_embed_type="identity")
    tau = AttributeProjection(list(names), list(counts), embedding_dim=unet.time_embedding.linear_2.out_features)
    CartoonDiffusionPipeline(unet=unet, tau=tau, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(out)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    _tiny_cartoon_model(root / "models" / "cartoon")
    save_portable(_pipeline(root), root / "models" / "ldm")  # as train_ldm saves it
    return root


def test_the_readme_has_the_loading_examples():
    text = "\n".join(BLOCKS)
    assert 'CartoonDiffusionPipeline.from_pretrained("models/cartoon")' in text
    assert 'LatentDiffusionPipeline.from_pretrained("models/ldm")' in text
    assert 'DiffusionPipeline.from_pretrained("models/ldm", trust_remote_code=True)' in text


RUNNER = """
import json, sys
blocks = json.loads(sys.stdin.read())
for i, block in enumerate(blocks):
    scope = {"__name__": "__main__"}  # each block alone, as a user pastes it
    try:
        exec(compile(block, f"README block {i}", "exec"), scope)
    except Exception as exc:
        sys.exit(f"README block {i} failed: {type(exc).__name__}: {exc}\\n{block}")
    if "images" in scope:
        assert len(scope["images"]) >= 1 and scope["images"][0].size[0] > 0, f"README block {i}: no images"
"""


def test_readme_examples_run_as_written(workdir):
    # One fresh interpreter (nothing imported or patched beforehand) runs every block in a scope of its own.
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf")}
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(BLOCKS), cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

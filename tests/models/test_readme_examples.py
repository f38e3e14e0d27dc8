"""The README's Python examples, exactly as written, on tiny models saved where they look."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import save_portable
from tasks.synthetic.cartoons import CARTOONSET_ATTRIBUTES
from tests.helpers.models import save_tiny_cartoon
from tests.helpers.models import tiny_latent_pipeline as _pipeline

REPO = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    save_tiny_cartoon(root / "models" / "cartoon", CARTOONSET_ATTRIBUTES)  # Cartoon Set's names, as the README's
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
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(BLOCKS),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

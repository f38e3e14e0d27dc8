"""The pipelines as users call them:

- `CartoonDiffusionPipeline.__call__` honours `guidance_scale` (test_cartoon_model.py covers `predict`
  and the loop at guidance 1 only): the whole loop at 0 and 3 is the manual CFG loop.
- Both portable folders users get from training (cartoon with its Tau module, DreamBooth full
  fine-tune with its identifier) load and sample in an interpreter that cannot import the project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch

from pipelines import denoise, save_portable
from tests.helpers.models import CARTOON_MODES as MODES
from tests.helpers.models import tiny_cartoon_pipeline as tiny_pipeline
from tests.helpers.models import tiny_latent_pipeline

torch.set_num_threads(1)

ATTRS = [[0, 1, 3], [2, 0, 0]]


def _perturbed(mode: str):
    """A tiny cartoon pipeline whose conditional and null predictions differ clearly."""
    pipe = tiny_pipeline(mode)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in pipe.tau.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return pipe


def _manual_cfg_loop(pipe, guidance: float, seed: int, steps: int = 3) -> torch.Tensor:
    """The sampling loop written out: null + w * (cond - null) at every step."""
    cond = pipe.encode_attributes(ATTRS)
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn((len(ATTRS), 3, 8, 8), generator=gen)
    pipe.scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            c = denoise(pipe.unet, pipe.tau, sample, t, cond)
            n = denoise(pipe.unet, pipe.tau, sample, t, torch.zeros_like(cond))
            sample = pipe.scheduler.step(n + guidance * (c - n), t, sample, generator=gen).prev_sample
    return (sample / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("mode", MODES)
def test_cartoon_call_applies_guidance_scale(mode):
    pipe = _perturbed(mode)

    def call(w):
        return pipe(
            ATTRS, guidance_scale=w, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="pt"
        ).images

    one, three, zero = call(1.0), call(3.0), call(0.0)
    assert (one - three).abs().max() > 1e-3 and (one - zero).abs().max() > 1e-3
    torch.testing.assert_close(three, _manual_cfg_loop(pipe, 3.0, seed=1), rtol=0, atol=1e-5)
    torch.testing.assert_close(zero, _manual_cfg_loop(pipe, 0.0, seed=1), rtol=0, atol=1e-5)
    torch.testing.assert_close(one, _manual_cfg_loop(pipe, 1.0, seed=1), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------- portable, isolated

# A fresh interpreter that cannot see the project: -I (no PYTHONPATH, no cwd on sys.path), -S (no
# .pth files: the project's editable install is one), only the venv's site-packages, cwd elsewhere.
# One child for every folder (starting one costs ~13 s of CPU, importing torch and diffusers): for
# each folder named in argv[1] it loads the folder, samples twice with the same seed, and once with
# the "other" arguments when given; a folder that fails records its error and the next one runs.
CHILD = """
import importlib.util, json, sys, traceback
sys.path.append({site!r})
for name in ("pipelines", "tasks", "flows", "tests"):
    assert importlib.util.find_spec(name) is None, (name, sys.path)
import numpy as np, torch
from diffusers import DiffusionPipeline

report = {{}}
for folder, args in json.loads(sys.argv[1]).items():
    try:
        other = args.pop("other", None)
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)

        def run(**kw):
            return pipe(**kw, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                        output_type="np").images

        out = {{"first": run(**args), "again": run(**args)}}
        if other is not None:
            out["other"] = run(**{{**args, **other}})
        np.savez(folder + ".npz", **out)
        mods = sorted({{type(pipe).__module__, *(type(c).__module__ for c in pipe.components.values())}})
        report[folder] = {{"class": type(pipe).__name__, "modules": mods}}
    except Exception:
        report[folder] = {{"error": traceback.format_exc()}}
print(json.dumps(report))
"""


def _run(pipe, **kw):
    return pipe(**kw, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """Portable folders of both cartoon modes and a DreamBooth full fine-tune (with identifier),
    sampled in the isolated child; per folder: the pipeline, its arguments and the child's result."""
    from pipelines.dreambooth import SubjectDiffusionPipeline, with_identifier

    root = tmp_path_factory.mktemp("portable")
    pipes, args = {}, {}
    for mode in MODES:
        pipes[f"cartoon_{mode}"] = _perturbed(mode)
        args[f"cartoon_{mode}"] = {"attributes": ATTRS, "guidance_scale": 2.5}
    latent = tiny_latent_pipeline(root)
    unet = with_identifier(latent.unet)
    with torch.no_grad():  # labels 0 and 1 draw different images, as after training
        unet.class_embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    pipes["dreambooth"] = SubjectDiffusionPipeline(unet=unet, vae=latent.vae, scheduler=latent.scheduler)
    pipes["dreambooth"].set_progress_bar_config(disable=True)
    args["dreambooth"] = {"batch_size": 2, "guidance_scale": 2.0, "other": {"subject": False, "guidance_scale": 1.0}}
    elsewhere = root / "elsewhere"
    for name, pipe in pipes.items():
        save_portable(pipe, root / "saved" / name)
    shutil.copytree(root / "saved", elsewhere)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"), OMP_NUM_THREADS="1")
    code = CHILD.format(site=sysconfig.get_paths()["purelib"])
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, json.dumps(args)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {}
    for name, pipe in pipes.items():
        images = dict(np.load(elsewhere / f"{name}.npz")) if "error" not in report[name] else None
        out[name] = {"pipe": pipe, "args": args[name], "report": report[name], "images": images}
    return out


def _check_child(result) -> dict:
    report = result["report"]
    assert "error" not in report, report.get("error")
    assert report["class"] == type(result["pipe"]).__name__
    assert not any(m.split(".")[0] in ("pipelines", "tasks") for m in report["modules"]), report["modules"]
    got = result["images"]
    np.testing.assert_array_equal(got["first"], got["again"])  # same seed, same images
    return got


@pytest.mark.parametrize("mode", MODES)
def test_portable_cartoon_folder_samples_without_the_project(portable, mode):
    result = portable[f"cartoon_{mode}"]
    got = _check_child(result)
    assert got["first"].shape == (2, 8, 8, 3)
    # Same weights, code and seed as in the project; another process may sum in another order: ~1e-6.
    np.testing.assert_allclose(got["first"], _run(result["pipe"], **result["args"]), atol=1e-5, rtol=0)


def test_portable_dreambooth_folder_samples_without_the_project(portable):
    result = portable["dreambooth"]
    got, pipe = _check_child(result), result["pipe"]
    assert got["first"].shape == got["other"].shape == (2, 16, 16, 3)
    assert np.abs(got["first"] - got["other"]).max() > 1e-3  # the label reached the portable model
    np.testing.assert_allclose(got["first"], _run(pipe, batch_size=2, guidance_scale=2.0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["other"], _run(pipe, batch_size=2, subject=False), atol=1e-5, rtol=0)

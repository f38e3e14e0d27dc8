"""The attribute-conditional cartoon model: pipeline, conditioning modes, stage tasks on tiny data."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines import CartoonDiffusionPipeline, denoise, make_scheduler  # noqa: E402
from tests.helpers.models import CARTOON_COUNTS, CARTOON_MODES, CARTOON_NAMES  # noqa: E402
from tests.helpers.models import tiny_cartoon_pipeline as tiny_pipeline

NAMES, COUNTS, MODES = CARTOON_NAMES, CARTOON_COUNTS, CARTOON_MODES
WIDTH = sum(COUNTS)


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_and_same_seed_same_images(tmp_path, mode):
    pipe = tiny_pipeline(mode)
    attrs = [[0, 1, 3], [2, 0, 0]]
    first = pipe(attrs, num_inference_steps=4, generator=torch.Generator().manual_seed(7), output_type="np").images
    again = pipe(attrs, num_inference_steps=4, generator=torch.Generator().manual_seed(7), output_type="np").images
    assert first.shape == (2, 8, 8, 3) and np.array_equal(first, again)
    other = pipe(attrs, num_inference_steps=4, generator=torch.Generator().manual_seed(8), output_type="np").images
    assert not np.array_equal(first, other)

    pipe.save_pretrained(tmp_path / "m")
    for loaded in (CartoonDiffusionPipeline.from_pretrained(tmp_path / "m"),):  # no class patched into diffusers
        assert type(loaded) is CartoonDiffusionPipeline and type(loaded.tau) is type(pipe.tau)
        loaded.set_progress_bar_config(disable=True)
        out = loaded(attrs, num_inference_steps=4, generator=torch.Generator().manual_seed(7), output_type="np").images
        assert np.array_equal(first, out)
    assert loaded.attribute_names == tuple(NAMES)


def test_attribute_forms_agree_and_schedulers_swap():
    pipe = tiny_pipeline("class_embedding")
    onehot = np.zeros((1, WIDTH), np.float32)
    onehot[0, [1, 3 + 0, 5 + 2]] = 1
    forms = [
        [1, 0, 2],
        torch.tensor([[1, 0, 2]]),
        onehot,
        torch.from_numpy(onehot[0]),
        {"hair_color": 1, "face_color": 0, "glasses": 2},
        [{"glasses": 2, "hair_color": 1, "face_color": 0}],
    ]
    for form in forms:
        assert torch.equal(pipe.encode_attributes(form), torch.from_numpy(onehot)), form
    for name in ("ddim", "dpm"):
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
        images = pipe([1, 0, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
        assert len(images) == 1 and isinstance(images[0], Image.Image) and images[0].size == (8, 8)


@pytest.mark.parametrize("mode", MODES)
def test_guidance_one_is_the_conditional_prediction(mode):
    pipe = tiny_pipeline(mode)
    # Perturb the weights so conditional and null predictions differ clearly.
    with torch.no_grad():
        for p in pipe.tau.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(10)
    cond = pipe.encode_attributes([[0, 1, 3], [2, 0, 0]])
    with torch.no_grad():
        conditional = denoise(pipe.unet, pipe.tau, x, t, cond)
        null = denoise(pipe.unet, pipe.tau, x, t, torch.zeros_like(cond))
        assert not torch.allclose(conditional, null, atol=1e-4)
        assert torch.equal(pipe.predict(x, t, cond, 1.0), conditional)
        assert torch.equal(pipe.predict(x, t, cond, 0.0), null)
        assert torch.allclose(pipe.predict(x, t, cond, 3.0), null + 3 * (conditional - null), atol=1e-5)
    # Whole sampling loop at guidance 1 == a loop over the conditional model alone.
    got = pipe(
        [[0, 1, 3]],
        guidance_scale=1.0,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(1),
        output_type="pt",
    ).images
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn((1, 3, 8, 8), generator=gen)
    pipe.scheduler.set_timesteps(3)
    with torch.no_grad():
        for step in pipe.scheduler.timesteps:
            out = denoise(pipe.unet, pipe.tau, sample, step, cond[:1])
            sample = pipe.scheduler.step(out, step, sample, generator=gen).prev_sample
    assert torch.equal(got, (sample / 2 + 0.5).clamp(0, 1))


def test_bad_inputs_are_named():
    pipe = tiny_pipeline("cross_attention")
    cases = [
        (np.zeros((1, WIDTH + 1), np.float32), "width"),
        ([[0, 1, 4]], r"'glasses' index 4 out of range 0..3"),
        ([[0, -1, 0]], r"'face_color' index -1 out of range"),
        ({"hair_color": 0, "face_colour": 1, "glasses": 0}, "unknown attribute name 'face_colour'"),
        ({"hair_color": 5}, r"'hair_color' index 5 out of range 0..2"),
        ([[0.5, 1, 0]], "integers"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe(bad, num_inference_steps=1)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe([[0, 0, 0]], guidance_scale=-1.0, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"shape \(batch, 9\)"):
        pipe.tau(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("euler-ish", pipe.scheduler.config)


def test_a_partial_dict_draws_the_other_attributes_with_the_generator():
    pipe = tiny_pipeline("class_embedding")

    def onehot(d, seed):
        return pipe.encode_attributes([d] * 64, torch.Generator().manual_seed(seed))

    a, b, c = onehot({"hair_color": 2}, 0), onehot({"hair_color": 2}, 0), onehot({"hair_color": 2}, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)  # reproducible for a seed
    assert (a[:, :3].argmax(1) == 2).all() and (a.sum(1) == 3).all()  # the named one fixed, one variant each
    drawn = a[:, 3:5].argmax(1), a[:, 5:9].argmax(1)  # face_color (2), glasses (4): all variants
    assert set(drawn[0].tolist()) == {0, 1} and set(drawn[1].tolist()) == {0, 1, 2, 3}
    # A complete dict draws nothing: the same images as the index list, for the same seed.
    full = pipe(
        {"hair_color": 1, "face_color": 0, "glasses": 3},
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(4),
        output_type="np",
    ).images
    same = pipe([[1, 0, 3]], num_inference_steps=2, generator=torch.Generator().manual_seed(4), output_type="np").images
    assert np.array_equal(full, same)

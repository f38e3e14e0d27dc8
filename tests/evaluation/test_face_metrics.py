"""Face metrics (tasks/evaluation/metrics.py) against hand-computed values, and the dlib features on
real photos that packages ship."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tasks.evaluation import metrics as M


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- Fréchet distance ------------------------------------------------------------------------------


def test_fd_identical_sets_is_zero():
    x = _rng().normal(size=(40, 8))
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fd_of_shifted_set_is_squared_shift():
    # same covariance, means differ by (3, 4): FD = |mu_r - mu_f|^2 = 25 (the trace terms cancel)
    x = _rng().normal(size=(50, 2))
    assert M.frechet_distance(x, x + np.array([3.0, 4.0])) == pytest.approx(25.0, rel=1e-6)


def test_fd_of_scaled_1d_gaussians():
    # 1-D: FD = (mu1 - mu2)^2 + (s1 - s2)^2; a set scaled by 2 has twice the std
    x = _rng(1).normal(size=(200, 1))
    s = x.std(ddof=1)
    assert M.frechet_distance(x, 2 * x) == pytest.approx((x.mean() - 2 * x.mean()) ** 2 + s**2, rel=1e-6)


def test_fd_needs_two_rows_and_equal_dims():
    with pytest.raises(M.NotEnoughSamples):
        M.frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        M.frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


# --- KID ------------------------------------------------------------------------------------------


def test_mmd_unbiased_on_hand_computed_case():
    # d = 1, kernel (xy + 1)^3. x = {0, 1}: k(0,1) = 1. y = {1, 2}: k(1,2) = 27.
    # k_xy: k(0,1)=1, k(0,2)=1, k(1,1)=8, k(1,2)=27 -> mean 37/4.
    # MMD^2 = (2*1)/2 + (2*27)/2 - 2 * 37/4 = 1 + 27 - 18.5 = 9.5
    x, y = np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])
    assert M.mmd2_unbiased(x, y) == pytest.approx(9.5)


def test_kid_identical_sets_near_zero_and_unbiased():
    x = _rng(2).normal(size=(60, 16)) / 4
    mean, std, size = M.kernel_inception_distance(x, x, num_subsets=20, subset_size=30, seed=0)
    shifted, _, _ = M.kernel_inception_distance(x, x + 0.5, num_subsets=20, subset_size=30, seed=0)
    # subsets of one set share rows, which pulls the unbiased estimate slightly below 0
    assert size == 30 and abs(mean) < 0.01 * shifted
    # two independent draws of one distribution: unbiased -> the average over many pairs of sets is
    # ~0 and takes negative values too (a biased estimator would stay positive)
    values = [M.mmd2_unbiased(_rng(10 + i).normal(size=(20, 4)), _rng(100 + i).normal(size=(20, 4))) for i in range(60)]
    assert min(values) < 0 < max(values)
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_kid_separates_shifted_distribution_and_caps_subset():
    x = _rng(3).normal(size=(30, 8))
    y = _rng(4).normal(size=(12, 8)) + 2.0
    mean, std, size = M.kernel_inception_distance(x, y, num_subsets=5, subset_size=100, seed=0)
    assert size == 6 and mean > 1.0  # capped at half the smaller set: subsets differ, std > 0
    assert std > 0
    assert M.kernel_inception_distance(x, y, 5, 100, seed=0) == (mean, std, size)  # deterministic


# --- precision / recall -----------------------------------------------------------------------------


def _cluster(center, n, seed, scale=0.1):
    return np.asarray(center, dtype=float) + scale * _rng(seed).normal(size=(n, len(center)))


def test_precision_recall_on_constructed_clusters():
    real = np.concatenate([_cluster([0, 0], 20, 0), _cluster([10, 0], 20, 1)])
    # fakes: near-copies of the first real cluster only, plus 10 off in nowhere
    fake = np.concatenate([real[:20] + 1e-3, _cluster([0, 50], 10, 3)])
    precision, recall = M.precision_recall(real, fake, k=3)
    assert precision == pytest.approx(20 / 30)  # the 10 far fakes are in no real ball
    assert recall == pytest.approx(20 / 40)  # the second real cluster is in no fake ball


def test_precision_recall_same_set_is_one():
    x = _cluster([1, 2, 3], 15, 5)
    assert M.precision_recall(x, x, k=3) == (1.0, 1.0)


def test_knn_radius_hand_computed():
    x = np.array([[0.0], [1.0], [3.0], [6.0]])
    # distances from 0: 1, 3, 6 -> 2nd nearest 3; from 1: 1, 2, 5 -> 2; from 3: 2, 3, 3 -> 3; from 6: 3, 5, 6 -> 5
    np.testing.assert_allclose(M.knn_radii(x, 2), [3.0, 2.0, 3.0, 5.0])


# --- identity, diversity, memorisation ------------------------------------------------------------


def test_id_top1_on_constructed_descriptors():
    subject = np.array([[0.0, 0.0], [0.2, 0.0]])
    others = np.array([[5.0, 0.0], [0.0, 5.0]])
    samples = np.array([[0.1, 0.1], [4.0, 0.0], [0.3, 0.0], [0.0, 4.5]])  # 2 near the subject, 2 near others
    assert M.id_top1(samples, subject, others) == pytest.approx(0.5)
    assert M.id_top1(subject, subject, others) == 1.0


def test_id_top1_ceiling_is_the_photos_leave_one_out_share():
    # two photos close together, a third far off nearer a real face
    photos = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    others = np.array([[5.2, 5.0], [9.0, 9.0]])
    assert M.id_top1_ceiling(photos, others) == pytest.approx(2 / 3)
    assert M.rate_standard_error(0.5, 100) == pytest.approx(0.05)
    assert M.rate_standard_error(None, 10) is None and M.rate_standard_error(0.5, 0) is None


def test_distances_hand_computed():
    x = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert M.mean_pairwise_distance(x) == pytest.approx(5.0)
    assert M.centroid_distance(x, x) == pytest.approx(2.5)  # centroid (1.5, 2)
    assert M.nearest_distance(np.array([[0.0, 1.0]]), x) == pytest.approx(1.0)
    assert M.leave_one_out_nearest(np.array([[0.0], [1.0], [3.0]])) == pytest.approx((1 + 1 + 2) / 3)


def test_too_few_samples_is_reported():
    with pytest.raises(M.NotEnoughSamples):
        M.mean_pairwise_distance(np.zeros((1, 3)))
    with pytest.raises(M.NotEnoughSamples):
        M.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        M.centroid_distance(np.zeros(3), np.zeros((2, 3)))


# --- dlib features on real photos -----------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor():
    from tasks.evaluation.features import DlibFaceExtractor, FeatureConfig

    return DlibFaceExtractor(
        FeatureConfig(upscale_to=256, upsample=1, chip_size=150, chip_padding=0.25, num_jitters=0, workers=1)
    )


def _photos():
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        hopper = np.asarray(im.convert("RGB"))
    return skimage.data.astronaut(), hopper


def test_detection_and_descriptor_on_shipped_photos(extractor):
    from PIL import Image

    astronaut, hopper = _photos()
    feats = extractor([astronaut, hopper])
    assert feats.detected.tolist() == [True, True] and feats.descriptors.shape == (2, 128)
    assert np.isfinite(feats.descriptors).all()
    # two different people: farther apart than dlib's 0.6 same-person threshold
    assert np.linalg.norm(feats.descriptors[0] - feats.descriptors[1]) > 0.6
    # the same person at 64 px (as the default's samples), upscaled by the one preprocessing: same identity
    small = np.asarray(Image.fromarray(astronaut).resize((64, 64), Image.LANCZOS))
    again = extractor([small])
    assert again.detected.tolist() == [True]
    assert np.linalg.norm(again.descriptors[0] - feats.descriptors[0]) < 0.6
    # deterministic
    np.testing.assert_array_equal(extractor([astronaut]).descriptors, feats.descriptors[:1])


def test_worker_pool_gives_the_same_features_in_the_same_order(extractor):
    from tasks.evaluation.features import DlibFaceExtractor

    astronaut, hopper = _photos()
    noise = [_rng(i).integers(0, 256, size=(64, 64, 3), dtype=np.uint8) for i in range(3)]
    images = [noise[0], astronaut, noise[1], hopper, noise[2]]
    one = extractor(images)
    with DlibFaceExtractor(dataclasses.replace(extractor.cfg, workers=2)) as pooled:
        two = pooled(images)
        assert pooled._pool is not None  # really ran in worker processes
    assert two.detected.tolist() == one.detected.tolist() == [False, True, False, True, False]
    np.testing.assert_array_equal(two.descriptors, one.descriptors)


def test_noise_grid_has_no_faces(extractor):
    noise = [_rng(i).integers(0, 256, size=(64, 64, 3), dtype=np.uint8) for i in range(8)]
    feats = extractor(noise)
    assert feats.detect_rate == 0.0 and feats.descriptors.shape == (0, 128)


def test_feature_config_rejects_bad_values():
    from tasks.config.typed import ConfigError
    from tasks.evaluation.features import FeatureConfig

    with pytest.raises(ValueError, match="upscale_to"):
        FeatureConfig(upscale_to=8, upsample=1, chip_size=150, chip_padding=0.25, num_jitters=0)
    with pytest.raises(ConfigError, match="missing"):
        FeatureConfig.from_params({"upscale_to": 256}, "features")

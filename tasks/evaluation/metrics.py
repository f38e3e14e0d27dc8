"""Distribution and identity metrics on face descriptors: pure numpy (and scipy's sqrtm).

Every function takes (N, D) float arrays of descriptors (dlib's 128-d ones in this project, but
nothing here knows the extractor: callers name the results, e.g. `fd_dlib`). Functions that need
more samples than they got raise `NotEnoughSamples`, so a caller can record "not measurable"
instead of a number computed from one face.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg


class NotEnoughSamples(ValueError):
    """Too few descriptors for the metric to be defined."""


def _as_2d(x: np.ndarray, name: str, min_rows: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected an (N, D) array, got shape {x.shape}")
    if len(x) < min_rows:
        raise NotEnoughSamples(f"{name}: needs at least {min_rows} descriptors, got {len(x)}")
    return x


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptor sizes differ: {a.shape[1]} vs {b.shape[1]}")


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)); exact enough for 128-d descriptors of norm ~1."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the two sets (the FID formula on any features):
    |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)). Biased upwards at small N."""
    real, fake = _as_2d(real, "real", 2), _as_2d(fake, "fake", 2)
    _same_dim(real, fake)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r = np.atleast_2d(np.cov(real, rowvar=False))  # (D, D), also for D = 1
    s_f = np.atleast_2d(np.cov(fake, rowvar=False))
    covmean = linalg.sqrtm(s_r @ s_f)
    if not np.isfinite(covmean).all():  # singular product (N < D is the usual case here): regularise
        eps = 1e-6 * np.eye(len(s_r))
        covmean = linalg.sqrtm((s_r + eps) @ (s_f + eps))
    covmean = np.real(covmean)  # rounding leaves tiny imaginary parts
    value = float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r) + np.trace(s_f) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # rounding can give -1e-12 for identical sets


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / d + 1)^3."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (diagonal terms excluded)."""
    x, y = _as_2d(x, "x", 2), _as_2d(y, "y", 2)
    _same_dim(x, y)
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, num_subsets: int, subset_size: int, seed: int
) -> tuple[float, float, int]:
    """KID (Binkowski et al. 2018) on any features: unbiased MMD^2 averaged over `num_subsets`
    random subsets of `subset_size` from each set, capped at half the smaller set (at least 2) so
    that subsets differ and their std says how much the figure moves with the sample drawn.
    Returns (mean, std over subsets, the subset size used). Deterministic for `seed`."""
    real, fake = _as_2d(real, "real", 2), _as_2d(fake, "fake", 2)
    size = min(int(subset_size), max(2, min(len(real), len(fake)) // 2))
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            real[rng.choice(len(real), size, replace=False)], fake[rng.choice(len(fake), size, replace=False)]
        )
        for _ in range(int(num_subsets))
    ]
    return float(np.mean(values)), float(np.std(values)), size


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (the radius of its k-NN ball)."""
    x = _as_2d(x, "x", k + 1)
    d = pairwise_distances(x, x)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision = share of fake samples
    inside some real sample's k-NN ball; recall = share of real samples inside some fake's ball."""
    real, fake = _as_2d(real, "real", k + 1), _as_2d(fake, "fake", k + 1)
    _same_dim(real, fake)
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    d = pairwise_distances(real, fake)  # (n_real, n_fake)
    precision = float((d <= r_real[:, None]).any(axis=0).mean())
    recall = float((d <= r_fake[None, :]).any(axis=1).mean())
    return precision, recall


def id_top1(samples: np.ndarray, subject: np.ndarray, others: np.ndarray) -> float:
    """Share of samples whose nearest neighbour among subject photos + other real faces is a subject
    photo. Needs no identity labels: 1.0 = every sample looks most like the subject."""
    samples, subject, others = (
        _as_2d(samples, "samples", 1),
        _as_2d(subject, "subject", 1),
        _as_2d(others, "others", 1),
    )
    nearest_subject = pairwise_distances(samples, subject).min(axis=1)
    nearest_other = pairwise_distances(samples, others).min(axis=1)
    return float((nearest_subject < nearest_other).mean())


def id_top1_ceiling(subject: np.ndarray, others: np.ndarray) -> float:
    """The subject photos' own leave-one-out id_top1: how often a photo's nearest neighbour among the
    *other* photos + the real faces is a subject photo. What a perfect subject model would score."""
    subject, others = _as_2d(subject, "subject", 2), _as_2d(others, "others", 1)
    d_self = pairwise_distances(subject, subject)
    np.fill_diagonal(d_self, np.inf)
    return float((d_self.min(axis=1) < pairwise_distances(subject, others).min(axis=1)).mean())


def rate_standard_error(rate: float | None, n: int) -> float | None:
    """Binomial standard error of a share measured on n samples."""
    return None if rate is None or n < 1 else math.sqrt(rate * (1 - rate) / n)


def centroid_distance(samples: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance from each sample to the reference set's centroid (identity distance)."""
    samples, reference = _as_2d(samples, "samples", 1), _as_2d(reference, "reference", 1)
    return float(np.linalg.norm(samples - reference.mean(0), axis=1).mean())


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean distance over distinct pairs (diversity; DreamBooth's DIV on descriptors)."""
    x = _as_2d(x, "x", 2)
    d = pairwise_distances(x, x)
    n = len(x)
    return float(d[~np.eye(n, dtype=bool)].mean())


def nearest_distance(samples: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance from each sample to its nearest reference row (memorisation: near 0 = copies)."""
    samples, reference = _as_2d(samples, "samples", 1), _as_2d(reference, "reference", 1)
    return float(pairwise_distances(samples, reference).min(axis=1).mean())


def leave_one_out_nearest(x: np.ndarray) -> float:
    """Mean distance from each row to its nearest *other* row: the reference set's own spacing,
    beside which a sample's `nearest_distance` says whether it copies a photo."""
    x = _as_2d(x, "x", 2)
    d = pairwise_distances(x, x)
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean())

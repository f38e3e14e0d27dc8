"""`dvc plots diff` shows each revision's sample grids and curves, and renders offline.

The offline template (plots_template/, built from npm's vega files) is checked in a real headless
Chromium: the screenshot must show the curve (drawn by Vega) and both revisions' grids. The same
page with DVC's default template stays without curves offline, which is why the template exists.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TEMPLATE_DIR = REPO / "plots_template"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def offline_template(tmp_path: Path) -> Path:
    if not (TEMPLATE_DIR / "node_modules" / "vega").is_dir():
        pytest.skip("vega is not installed: `make plots-template` (npm ci in plots_template/)")
    sys.path.insert(0, str(TEMPLATE_DIR))
    try:
        import build
    finally:
        sys.path.remove(str(TEMPLATE_DIR))
    return build.build(out=tmp_path / "offline.html")


def two_revisions(root: Path) -> Path:
    """A git+DVC repo whose two commits differ in a loss curve and a (red -> green) sample grid."""
    root.mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    run(root, "git", "init", "-q")
    run(root, str(BIN / "dvc"), "init", "-q")
    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"plots": [{"curves/loss.tsv": {"x": "step", "y": "loss"}}, "grids"]})
    )
    (root / "curves").mkdir()
    (root / "grids").mkdir()
    for rev, colour in enumerate([(255, 0, 0), (0, 255, 0)]):
        rows = "\n".join(f"{s}\t{(1 + rev) / (s + 1):.4f}" for s in range(20))
        (root / "curves/loss.tsv").write_text(f"step\tloss\n{rows}\n")
        Image.new("RGB", (96, 96), colour).save(root / "grids/samples.png")
        run(root, *git, "add", "-A")
        run(root, *git, "commit", "-qm", f"rev {rev}")
    return root


def screenshot(html: Path, out: Path) -> np.ndarray:
    run(
        html.parent,
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={out.parent / 'chromium-profile'}",
        "--hide-scrollbars",
        "--window-size=1200,1400",
        "--virtual-time-budget=5000",
        f"--screenshot={out}",
        html.as_uri(),
    )
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def pixels_near(img: np.ndarray, colour, tol: int = 10) -> int:
    return int((np.abs(img - np.array(colour)).max(axis=-1) <= tol).sum())


def curve_pixels(img: np.ndarray) -> int:
    """Coloured pixels other than the red and green grids: the lines and legend Vega draws."""
    saturated = img.max(axis=-1) - img.min(axis=-1) > 60
    grids = (np.abs(img - [255, 0, 0]).max(axis=-1) <= 10) | (np.abs(img - [0, 255, 0]).max(axis=-1) <= 10)
    return int((saturated & ~grids).sum())


def test_the_sample_grids_are_declared_as_plots(tmp_path):
    """dvc.yaml's top-level plots name the image folders of the training and evaluation stages."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    names = {p if isinstance(p, str) else next(iter(p)) for p in plots}
    assert {"dvclive/train_cartoon/plots/images", "dvclive/train_ldm/plots/images", "eval/cartoon"} <= names
    shown = json.loads(run(REPO, str(BIN / "dvc"), "plots", "show", "--json", "-o", str(tmp_path), "eval/cartoon"))
    images = [k for k in shown.get("data", shown) if k.endswith(".png")] if isinstance(shown, dict) else []
    if (REPO / "eval/cartoon").is_dir():
        assert any("grid_guidance" in k for k in images), shown


def test_plots_diff_with_the_offline_template_has_no_cdn_and_both_revisions(tmp_path):
    template = offline_template(tmp_path)
    repo = two_revisions(tmp_path / "repo")
    run(repo, str(BIN / "dvc"), "plots", "diff", "HEAD~1", "HEAD", "--html-template", str(template), "-o", "out")
    page = (repo / "out/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page
    # The grid of each revision, side by side.
    assert sorted(re.findall(r'<img src="static/([^"]+)"', page)) == [
        "HEAD_grids_samples.png",
        "HEAD~1_grids_samples.png",
    ]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `apt-get install -y chromium` to run the browser check")
def test_the_offline_page_shows_curves_and_pictures_in_chromium(tmp_path):
    template = offline_template(tmp_path)
    repo = two_revisions(tmp_path / "repo")
    dvc = str(BIN / "dvc")
    run(repo, dvc, "plots", "diff", "HEAD~1", "HEAD", "--html-template", str(template), "-o", "offline")
    run(repo, dvc, "plots", "diff", "HEAD~1", "HEAD", "-o", "default")
    offline = screenshot(repo / "offline/index.html", tmp_path / "offline.png")
    default = screenshot(repo / "default/index.html", tmp_path / "default.png")
    assert pixels_near(offline, (255, 0, 0)) > 1000 and pixels_near(offline, (0, 255, 0)) > 1000
    assert curve_pixels(offline) > 300, "Vega drew no curve"
    # DVC's own page needs the CDN: offline the curves are missing (the images are plain <img> tags).
    assert pixels_near(default, (255, 0, 0)) > 1000 and curve_pixels(default) < 20

"""The run's scorecard: each stage's headline figure against its target, the image to look at, and
one verdict line, so a run that missed something says so at its end instead of in two WARNING lines.

    python -m tasks.reporting.scorecard            # print it, write scorecard.md; exit 0
    python -m tasks.reporting.scorecard --strict   # the same, exit 1 when a target is missed

It reads committed files only: metrics/*.json (with each stage's own `target_met`-style flags) and
params.yaml (the thresholds that live there), so it runs in a second on any checkout, with no model
or data pulled. `make repro` prints it after `dvc repro`; the GPU worker puts it in its Prefect
artifact and `flows.submit` prints it when the results come home.

Targets. Where a stage sets one, the figure must clear params.yaml's threshold (read now: a threshold
raised since the run is a miss) and the stage's own flags must say met. Stages without a numeric
target (the training losses, the attribute judge, the cartoon headline) are held to a figure that
exists and is finite. A metrics file that is missing, or a headline figure that is null or NaN (no
face found in any sample, a diverged loss), is a missed target, named in the verdict.

scorecard.md is written at the repository root and git-ignored: the card is a pure function of
committed files, so committing it would only duplicate them (and go stale when they change); and
it must not go inside a DVC output folder such as eval/faces, whose changed hash would make
`dvc repro` run that stage again. Its image links are relative to the root, so they open from it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

MET, MISSED, NO_FIGURE, NO_FILE, SKIPPED = "met", "MISSED", "NO FIGURE", "NO FILE", "skipped"
DEFAULT_OUTPUT = "scorecard.md"


@dataclass
class Row:
    """One stage's headline figure against its target."""

    stage: str
    metrics_file: str
    figure: str  # the metric's name in metrics_file
    value: float | None  # None: missing, null or not finite
    shown: str  # the value as printed (with its unit), or why there is none
    target: str  # what the figure is held to, and where the threshold comes from
    status: str  # MET | MISSED | NO_FIGURE | NO_FILE | SKIPPED
    why: str = ""  # a miss's reasons, or why the row was skipped
    details: str = ""  # the figures around the headline
    image: str | None = None  # the grid to look at, relative to the repository root

    @property
    def counted(self) -> bool:
        return self.status != SKIPPED

    @property
    def missed(self) -> bool:
        return self.counted and self.status != MET


@dataclass
class Card:
    rows: list[Row]
    note: str = ""  # said above and below the card (e.g. dvc repro failed)
    error: str = ""  # the card itself could not be made (the worker records why)

    @property
    def counted(self) -> list[Row]:
        return [r for r in self.rows if r.counted]

    @property
    def missed(self) -> list[Row]:
        return [r for r in self.rows if r.missed]

    def verdict(self) -> str:
        if self.error:
            return f"no scorecard: {self.error}"
        missed, n = self.missed, len(self.counted)
        skipped = [r for r in self.rows if not r.counted]
        tail = f" ({len(skipped)} skipped: {'; '.join(f'{r.stage} {r.why}' for r in skipped)})" if skipped else ""
        if not missed:
            return f"all {n} targets met{tail}"
        return f"{len(missed)} of {n} targets missed: " + "; ".join(_miss_words(r) for r in missed) + tail

    def text(self) -> str:
        """The card for a terminal or a log: two or three lines a stage, misses in capitals."""
        lines = ["==> scorecard: each stage's headline figure against its target (metrics/*.json, params.yaml)"]
        if self.note:
            lines.append(f"    NOTE: {self.note}")
        for r in self.rows:
            mark = "!!" if r.missed else "  "
            lines.append(f"{mark}{'[' + r.status + ']':11} {r.stage}: {r.figure} = {r.shown}   target: {r.target}")
            if r.why:
                lines.append(f"{'':14}{'why' if r.missed else 'note'}: {r.why}")
            extra = [r.details] if r.details else []
            lines.append(f"{'':14}" + "; ".join(extra + [f"look at: {r.image or 'no image written'}"]))
        if self.note:
            lines.append(f"    NOTE: {self.note}")
        lines.append(f"==> {'VERDICT' if self.missed or self.error else 'verdict'}: {self.verdict()}")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The card as markdown: scorecard.md and the worker's Prefect artifact."""
        bold = "**" if self.missed or self.error else ""
        lines = ["# Scorecard", "", f"{bold}{self.verdict()}{bold}", ""]
        if self.note:
            lines += [f"> {self.note}", ""]
        if self.rows:
            lines += [
                "| status | stage | figure | value | target | why / details | look at |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for r in self.rows:
                status = f"**{r.status}**" if r.missed else r.status
                notes = "; ".join(x for x in (r.why, r.details) if x)
                image = f"[`{r.image}`]({r.image})" if r.image else "none"
                lines.append(
                    f"| {status} | `{r.stage}` | `{r.figure}` | {_cell(r.shown)} | {_cell(r.target)} | "
                    f"{_cell(notes)} | {image} |"
                )
        lines += ["", "Made by `python -m tasks.reporting.scorecard` from metrics/*.json and params.yaml."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Card:
        names = {f.name for f in fields(Row)}
        rows = [Row(**{k: v for k, v in row.items() if k in names}) for row in data.get("rows", [])]
        return cls(rows=rows, note=data.get("note", ""), error=data.get("error", ""))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _miss_words(r: Row) -> str:
    if r.status == NO_FILE:
        return f"{r.stage}: {r.metrics_file} {r.why or 'not found'}"
    if r.status == NO_FIGURE:
        return f"{r.stage} {r.figure}: no figure ({r.why})"
    return f"{r.stage} {r.figure} {r.why}"


# ------------------------------------------------------------------------------------ reading


def number(value: Any) -> float | None:
    """A finite number, else None (null, NaN, inf, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def param(params: dict, dotted: str) -> Any:
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def read_metrics(root: Path, rel: str) -> tuple[dict | None, str]:
    """(the metrics dict, "") or (None, why not)."""
    path = root / rel
    if not path.is_file():
        return None, "not found"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {type(exc).__name__}"
    return (data, "") if isinstance(data, dict) else (None, "not a JSON object")


def latest_image(root: Path, *patterns: str) -> str | None:
    """The last (by name: epoch-028 after epoch-007) image matching the first pattern that matches."""
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found[-1].relative_to(root).as_posix()
    return None


def _fmt(value: float | None, spec: str = ".3g", unit: str = "") -> str:
    return "null" if value is None else f"{value:{spec}}{unit}"


def _judged(
    stage: str,
    rel: str,
    figure: str,
    raw: Any,
    shown: str,
    target: str,
    reasons: list[str],
    details: str,
    image: str | None,
) -> Row:
    value = number(raw)
    if value is None:
        why = (
            "null"
            if raw is None
            else "NaN"
            if isinstance(raw, float) and math.isnan(raw)
            else f"{raw!r}, not a finite number"
        )
        return Row(stage, rel, figure, None, "no figure", target, NO_FIGURE, "; ".join([why, *reasons]), details, image)
    return Row(stage, rel, figure, value, shown, target, MISSED if reasons else MET, "; ".join(reasons), details, image)


def _recoveries(count: Any) -> str:
    """The divergence guard's roll-backs (tasks/training/guard.py): not a miss, but worth a look."""
    return f"; the divergence guard rolled back {count} time(s)" if count else ""


def _no_file(stage: str, rel: str, figure: str, target: str, why: str, image: str | None) -> Row:
    return Row(stage, rel, figure, None, "no metrics file", target, NO_FILE, why, "", image)


# ------------------------------------------------------------------------------------ the stages


def train_vae(root: Path, params: dict) -> list[Row]:
    rel, fig, stage = "metrics/train_vae.json", "psnr_gain_over_bilinear_db", "train_vae"
    need = number(param(params, "train_vae.min_gain_over_bilinear_db"))
    target = (
        f">= {need:+g} dB over bilinear (params train_vae.min_gain_over_bilinear_db), reliable"
        if need is not None
        else "target_met (params.yaml has no train_vae.min_gain_over_bilinear_db)"
    )
    image = latest_image(root, "dvclive/train_vae/plots/images/**/*.png")
    m, why = read_metrics(root, rel)
    if m is None:
        return [_no_file(stage, rel, fig, target, why, image)]
    value = number(m.get(fig))
    reasons = []
    if value is not None and need is not None and value < need:
        reasons.append(f"{value:+.2f} < {need:+g} dB")
    if m.get("reliable") is False:
        reasons.append(f"unreliable: {m.get('val_images')} validation faces (params train_vae.min_val_images)")
    if m.get("target_met") is False and value is not None and not reasons:
        reasons.append("the stage's target_met is false")
    details = (
        f"val PSNR {_fmt(number(m.get('psnr_val_db')), '.2f', ' dB')}, bilinear "
        f"{_fmt(number(m.get('psnr_val_bilinear_db')), '.2f', ' dB')}, {m.get('val_images')} validation faces"
        f"{_recoveries((m.get('training') or {}).get('recoveries'))}"
    )
    return [_judged(stage, rel, fig, m.get(fig), f"{_fmt(value, '+.2f')} dB", target, reasons, details, image)]


def _training(stage: str, rel: str, judged_by: str, extra_losses: tuple[str, ...] = ()) -> Callable:
    """A training stage: no target of its own (its model is judged downstream); its loss must be finite."""

    def rows(root: Path, params: dict) -> list[Row]:
        fig = "final_loss"
        target = f"finite (no target of its own: judged by {judged_by})"
        image = latest_image(root, f"dvclive/{stage}/plots/images/**/*.png")
        m, why = read_metrics(root, rel)
        if m is None:
            return [_no_file(stage, rel, fig, target, why, image)]
        reasons = [f"{k} {m.get(k)!r}" for k in extra_losses if number(m.get(k)) is None]
        shown_extra = ", ".join(f"{k} {_fmt(number(m.get(k)), '.4g')}" for k in extra_losses)
        details = ", ".join(x for x in (f"{m.get('steps')} steps", shown_extra) if x) + _recoveries(m.get("recoveries"))
        return [_judged(stage, rel, fig, m.get(fig), _fmt(number(m.get(fig)), ".4g"), target, reasons, details, image)]

    return rows


def evaluate_faces(root: Path, params: dict) -> list[Row]:
    rel, stage = "metrics/evaluate_faces.json", "evaluate_faces"
    ratio = number(param(params, "evaluate_faces.min_detect_ratio"))
    mode = param(params, "evaluate_faces.subject")
    base_image = latest_image(root, "eval/faces/comparison.png", "eval/faces/base.png")
    subject_image = latest_image(root, "eval/faces/subject.png", "eval/faces/comparison.png")
    subject_target = "subject_identity_ok and subject_prior_ok (tasks/evaluation/faces.py)"
    m, why = read_metrics(root, rel)
    real = None if m is None else number(m.get("face_detect_rate_real"))
    base_target = (
        f">= {_fmt(ratio, 'g')} x real {_fmt(real, '.2f')}"
        f"{f' = {ratio * real:.2f}' if None not in (ratio, real) else ''} "
        "(params evaluate_faces.min_detect_ratio), and kid_ok"
    )
    if m is None:
        rows = [_no_file(f"{stage} (base)", rel, "face_detect_rate", base_target, why, base_image)]
        if mode != "off":
            rows.append(_no_file(f"{stage} (subject)", rel, "id_top1", subject_target, why, subject_image))
        return rows

    rate, kid = number(m.get("face_detect_rate")), number(m.get("kid_dlib"))
    reasons = []
    if rate is not None and None not in (ratio, real) and rate < ratio * real:
        reasons.append(f"{rate:.2f} < {ratio:g} x {real:.2f} = {ratio * real:.2f}")
    if real is None:
        reasons.append("no real face found (face_detect_rate_real null)")
    if kid is None:
        reasons.append("kid_dlib null (too few faces found)")
    elif m.get("kid_ok") is False:
        reasons.append(
            f"kid_dlib {kid:.2g} not nearer the floor {m.get('kid_dlib_floor')!r} than the untrained "
            f"model's {m.get('kid_dlib_untrained')!r}"
        )
    if m.get("target_met") is False and rate is not None and not reasons:
        reasons.append("the stage's target_met is false")
    details = (
        f"kid_dlib {_fmt(kid, '.2g')} (floor {_fmt(number(m.get('kid_dlib_floor')), '.2g')}), fd_dlib "
        f"{_fmt(number(m.get('fd_dlib')), '.3f')} (floor {_fmt(number(m.get('fd_dlib_floor')), '.3f')}), "
        f"precision {_fmt(number(m.get('precision_dlib')), '.2f')}, recall "
        f"{_fmt(number(m.get('recall_dlib')), '.2f')}"
    )
    rows = [
        _judged(
            f"{stage} (base)",
            rel,
            "face_detect_rate",
            m.get("face_detect_rate"),
            _fmt(rate, ".2f"),
            base_target,
            reasons,
            details,
            base_image,
        )
    ]

    sub = f"{stage} (subject)"
    if "id_top1" not in m and mode != "required":
        words = "evaluate_faces.subject: off" if mode == "off" else f"no subject model (evaluate_faces.subject: {mode})"
        rows.append(Row(sub, rel, "id_top1", None, "not measured", subject_target, SKIPPED, words, "", subject_image))
        return rows
    idt, ceiling, base_id, cls = (
        number(m.get(k)) for k in ("id_top1", "id_top1_ceiling", "id_top1_base", "id_top1_class")
    )
    reasons = []
    if m.get("subject_identity_ok") is not True and idt is not None:
        reasons.append(
            f"subject_identity_ok {m.get('subject_identity_ok')!r} (id_top1 {idt:.2f}, photos' own "
            f"{_fmt(ceiling, '.2f')}, base {_fmt(base_id, '.2f')})"
        )
    if m.get("subject_prior_ok") is not True:
        reasons.append(
            f"subject_prior_ok {m.get('subject_prior_ok')!r} (class id_top1 {_fmt(cls, '.2f')}, "
            f"base {_fmt(base_id, '.2f')})"
        )
    details = (
        f"± {_fmt(number(m.get('id_top1_se')), '.2f')}; photos' own {_fmt(ceiling, '.2f')}; base "
        f"{_fmt(base_id, '.2f')}; class {_fmt(cls, '.2f')}; subject faces found "
        f"{_fmt(number(m.get('face_detect_rate_subject')), '.2f')}"
    )
    rows.append(
        _judged(
            sub, rel, "id_top1", m.get("id_top1"), _fmt(idt, ".2f"), subject_target, reasons, details, subject_image
        )
    )
    return rows


def train_attribute_classifier(root: Path, params: dict) -> list[Row]:
    rel, fig, stage = "metrics/attribute_classifier.json", "val_accuracy_mean", "train_attribute_classifier"
    target = "finite (no target of its own: evaluate_cartoon's judge)"
    m, why = read_metrics(root, rel)
    if m is None:
        return [_no_file(stage, rel, fig, target, why, None)]
    accuracy = m.get("val_accuracy") if isinstance(m.get("val_accuracy"), dict) else {}
    least = number(param(params, "evaluate_cartoon.min_ceiling"))
    details = f"{len(accuracy)} attributes"
    if least is not None and accuracy:
        read = sorted(k for k, v in accuracy.items() if (number(v) or 0.0) >= least)
        details += f"; {len(read)} read at >= {least:g} on real images (params evaluate_cartoon.min_ceiling)"
    return [_judged(stage, rel, fig, m.get(fig), _fmt(number(m.get(fig)), ".3f"), target, [], details, None)]


def evaluate_cartoon(root: Path, params: dict) -> list[Row]:
    rel, fig, stage = "metrics/evaluate_cartoon.json", "reliable_accuracy_vs_ceiling", "evaluate_cartoon"
    target = "finite, over >= 1 attribute the judge reads reliably (no numeric target)"
    m, why = read_metrics(root, rel)
    if m is None:
        return [_no_file(stage, rel, fig, target, why, latest_image(root, "eval/cartoon/*.png"))]
    best = number(m.get("best_guidance"))
    image = latest_image(
        root, *([f"eval/cartoon/grid_guidance_{best:g}.png"] if best is not None else []), "eval/cartoon/*.png"
    )
    reasons = []
    if m.get("reliable_attributes") is not None and not m.get("reliable_attributes"):
        reasons.append("no attribute read reliably by the judge")
    detail, _ = read_metrics(root, "metrics/evaluate_cartoon_attributes.json")
    names = detail.get("reliable") if detail else None
    details = (
        f"best guidance {_fmt(best, 'g')}; unconditional (guidance 0) "
        f"{_fmt(number(m.get(f'{fig}_guidance_0')), '.2f')}; reliable attributes "
        + (", ".join(names) if isinstance(names, list) and names else str(m.get("reliable_attributes")))
    )
    return [_judged(stage, rel, fig, m.get(fig), _fmt(number(m.get(fig)), ".3f"), target, reasons, details, image)]


# dvc.yaml's order: the face track, then the cartoon track.
STAGES: list[Callable[[Path, dict], list[Row]]] = [
    train_vae,
    _training("train_ldm", "metrics/train_ldm.json", "evaluate_faces (base)"),
    _training(
        "train_dreambooth",
        "metrics/train_dreambooth.json",
        "evaluate_faces (subject)",
        ("final_instance_loss", "final_prior_loss"),
    ),
    evaluate_faces,
    _training("train_cartoon", "metrics/train_cartoon.json", "evaluate_cartoon"),
    train_attribute_classifier,
    evaluate_cartoon,
]


def load_params(root: Path) -> dict:
    """params.yaml as DVC reads it (YAML 1.2: `subject: off` stays the string "off"); {} if absent."""
    path = root / "params.yaml"
    if not path.is_file():
        return {}
    from tasks.config.params import read_yaml

    return read_yaml(path) or {}


def build(root: str | Path = ".", params: dict | None = None, note: str = "") -> Card:
    """The card of the checkout at `root` (params: params.yaml there unless given)."""
    root = Path(root)
    params = load_params(root) if params is None else params
    return Card([row for stage in STAGES for row in stage(root, params)], note=note)


def write_markdown(card: Card, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(card.markdown())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.reporting.scorecard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", default=".", help="the checkout to read (default: here)")
    parser.add_argument(
        "--output", default=None, help=f"markdown file (default: <root>/{DEFAULT_OUTPUT}); '-' writes none"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--repro-status",
        type=int,
        default=0,
        metavar="N",
        help="dvc repro's exit status: non-zero says the figures may be from earlier runs",
    )
    args = parser.parse_args(argv)
    note = (
        ""
        if not args.repro_status
        else (
            f"dvc repro failed (exit {args.repro_status}): stages from the failed one on did not finish; their "
            "figures are from an earlier run"
        )
    )
    card = build(args.root, note=note)
    print(card.text(), flush=True)
    output = Path(args.root) / DEFAULT_OUTPUT if args.output is None else args.output
    if output != "-":
        print(f"    (also written to {write_markdown(card, output)})", flush=True)
    return 1 if args.strict and card.missed else 0


if __name__ == "__main__":
    sys.exit(main())

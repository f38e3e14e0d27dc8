"""Does each training recipe of the embedded default converge on any machine? Training seeds crossed
with torch thread counts (which change the float order of reductions much as another CPU does).

    .venv/bin/python -m benchmarks.sweep_stability                     # every stage, its default grid
    .venv/bin/python -m benchmarks.sweep_stability --stages train_vae --seeds 0-4 --threads 1,2
    .venv/bin/python -m benchmarks.sweep_stability --table             # print the table so far

Each run trains one stage on the committed upstream outputs (run `make repro` first), with only
the training seed changed (`training.seed`, or where SEED_PATHS says), in a child process with
`torch.set_num_threads(threads)`, into a scratch folder (`--work`, default .sweep/), then measures
the stage's headline figure the way the pipeline does (evaluate_faces / evaluate_cartoon for the
stages they judge). One JSON line per run goes to `--results` (default benchmarks/results/stability.jsonl), keyed
by stage, seed, threads and the identity of the stage's code and params: re-running the command
skips what is done (it takes hours: resume it across sessions), and a changed recipe runs afresh.
The table: stage, seed, threads, headline figure, target met, the guard's recoveries, minutes.
Never part of CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "stability.jsonl"
DEFAULT_GRID = {  # stage -> seeds; every stage crossed with threads 1 and 2
    "train_vae": range(5),  # the stage known to fall over: 10 runs
    "train_ldm": range(3),
    "train_dreambooth": range(3),
    "train_cartoon": range(3),
    "train_attribute_classifier": range(3),
}


# ------------------------------------------------------------------------------------------- one run per stage
# Each runner: (params section with the seed set, scratch folder) -> (headline name, value, target met,
# target as text, extra fields). Inputs are the repo's committed outputs, outputs go under `work`.


def run_train_vae(params: dict, work: Path) -> dict:
    from flows.train_vae import train_vae_task
    from tasks.latent.config import TrainVaeConfig

    config = TrainVaeConfig.from_params(params, "train_vae")
    m = train_vae_task.fn(
        str(REPO / "data/faces/aligned"),
        str(work / "vae"),
        str(work / "train_vae.json"),
        str(work / "live"),
        str(work / "checkpoints"),
        config,
    )
    return {
        "headline": "psnr_gain_over_bilinear_db",
        "value": m["psnr_gain_over_bilinear_db"],
        "target": f">= {config.min_gain_over_bilinear_db} dB",
        "met": bool(m["target_met"]),
        "recoveries": m["training"]["recoveries"],
        "psnr_val_db": m["psnr_val_db"],
        "scaling_factor": m["scaling_factor"],
    }


# Where the runners below read the committed upstream outputs (dvc.yaml's paths, relative to it): the
# repository; a smoke check on tiny inputs points it at a folder laid out the same way.
UPSTREAM = REPO


def _upstream(path: str) -> str:
    return str(UPSTREAM / path)


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def run_train_ldm(params: dict, work: Path) -> dict:
    """train_ldm's task, then evaluate_faces' base part (params.yaml's evaluate_faces section) on the
    new model: headline face_detect_rate against min_detect_ratio x the real faces' rate, as the
    stage's `detect_rate_ok`; its KID flag and overall `target_met` ride along."""
    from flows.train_ldm import train_ldm_task
    from tasks.config.params import stage_params
    from tasks.evaluation.faces import EvaluateFacesConfig, evaluate_base, headline
    from tasks.evaluation.features import DlibFaceExtractor
    from tasks.latent.config import TrainLdmConfig
    from tasks.reporting.log import get_logger

    config = TrainLdmConfig.from_params(params, "train_ldm")
    model_dir, metrics_path = work / "ldm", work / "train_ldm.json"
    train_ldm_task.fn(
        _upstream("data/faces/latents"),
        _upstream("models/vae"),
        str(model_dir),
        str(work / "checkpoints"),
        str(work / "live"),
        str(metrics_path),
        config,
    )
    trained = _read_json(metrics_path)  # also written when num_processes > 1 (the task then returns None)
    cfg = EvaluateFacesConfig.from_params(stage_params("evaluate_faces"), "evaluate_faces")
    with DlibFaceExtractor(cfg.features) as extractor:
        base = evaluate_base(str(model_dir), _upstream("data/faces/aligned"), cfg, extractor, log=get_logger().info)
    head = headline(base, None, cfg)
    real = head["face_detect_rate_real"]
    return {
        "headline": "face_detect_rate",
        "value": head["face_detect_rate"],
        "target": f">= {cfg.min_detect_ratio:g} x real {real:.3f} = {cfg.min_detect_ratio * real:.3f}",
        "met": bool(head["detect_rate_ok"]),
        "recoveries": trained["recoveries"],
        "face_detect_rate_real": real,
        "kid_dlib": head["kid_dlib"],
        "kid_dlib_floor": head["kid_dlib_floor"],
        "kid_dlib_untrained": head["kid_dlib_untrained"],
        "fd_dlib": head["fd_dlib"],
        "kid_ok": head["kid_ok"],
        "target_met": head["target_met"],
        "final_loss": trained.get("final_loss"),
        "steps": trained.get("steps"),
    }


def run_train_dreambooth(params: dict, work: Path) -> dict:
    """train_dreambooth's task on the committed base (params `dreambooth_base`), subject latents and
    class samples, then evaluate_faces' subject part on the new model (its base part on the committed
    base, which the subject figures are relative to). Headline: subject id_top1; met: the stage's
    `subject_identity_ok` (>= share x the photos' ceiling and >= base + margin) and `subject_prior_ok`
    (class id_top1 within the drift of the base's)."""
    from flows.train_dreambooth import train_dreambooth_task
    from tasks.config.params import stage_params
    from tasks.dreambooth.config import TrainDreamboothConfig
    from tasks.evaluation.faces import EvaluateFacesConfig, evaluate_base, evaluate_subject_model, headline
    from tasks.evaluation.features import DlibFaceExtractor
    from tasks.evaluation.targets import CLASS_DRIFT, ID_ABOVE_BASE, ID_CEILING_SHARE
    from tasks.reporting.log import get_logger

    config = TrainDreamboothConfig.from_params(params, "train_dreambooth")
    base_dir = _upstream(stage_params("dreambooth_base"))
    model_dir, metrics_path = work / "dreambooth", work / "train_dreambooth.json"
    train_dreambooth_task.fn(
        _upstream("data/faces/subject_latents"),
        _upstream("data/faces/class_latents"),
        base_dir,
        str(model_dir),
        str(work / "checkpoints"),
        str(work / "live"),
        str(metrics_path),
        config,
    )
    trained = _read_json(metrics_path)
    cfg = EvaluateFacesConfig.from_params(stage_params("evaluate_faces"), "evaluate_faces")
    aligned, log = _upstream("data/faces/aligned"), get_logger().info
    with DlibFaceExtractor(cfg.features) as extractor:
        base = evaluate_base(base_dir, aligned, cfg, extractor, log=log)
        subject = evaluate_subject_model(
            str(model_dir),
            base_dir,
            _upstream("data/faces/subject"),
            aligned,
            cfg,
            extractor=extractor,
            base=base,
            log=log,
        )
    head = headline(base, subject, cfg)

    def fig(key: str) -> str:
        return "n/a" if head[key] is None else f"{head[key]:.3f}"  # None: too few faces found

    return {
        "headline": "id_top1",
        "value": head["id_top1"],
        "target": f">= {ID_CEILING_SHARE:g} x ceiling {fig('id_top1_ceiling')} and >= base "
        f"{fig('id_top1_base')} + {ID_ABOVE_BASE:g}; class id_top1 {fig('id_top1_class')} within "
        f"{CLASS_DRIFT:g} of base",
        "met": bool(head["subject_identity_ok"] and head["subject_prior_ok"]),
        "recoveries": trained["recoveries"],
        **{
            k: head[k]
            for k in (
                "subject_identity_ok",
                "subject_prior_ok",
                "id_top1_class",
                "id_top1_base",
                "id_top1_ceiling",
                "id_top1_se",
                "face_detect_rate_subject",
            )
        },
        "final_loss": trained.get("final_loss"),
        "steps": trained.get("steps"),
    }


def run_train_cartoon(params: dict, work: Path) -> dict:
    """train_cartoon's task, then evaluate_cartoon (params.yaml's section) on the new model with the
    committed judge. Headline: reliable_accuracy_vs_ceiling at the stage's best_guidance. The stage
    flags no numeric target; its model card compares with guidance 0 (no conditioning), so met is
    'above the guidance-0 figure'."""
    from flows.train_cartoon import train_cartoon_task
    from tasks.cartoon.config import TrainCartoonConfig
    from tasks.cartoon.evaluate import HEADLINE, EvaluateCartoonConfig, run_evaluation, scale_key
    from tasks.config.params import stage_params

    config = TrainCartoonConfig.from_params(params, "train_cartoon")
    shards, model_dir, metrics_path = _upstream("data/cartoons/shards"), work / "cartoon", work / "train_cartoon.json"
    train_cartoon_task.fn(
        shards, str(model_dir), str(work / "checkpoints"), str(work / "live"), str(metrics_path), config
    )
    trained = _read_json(metrics_path)
    cfg = EvaluateCartoonConfig.from_params(stage_params("evaluate_cartoon"), "evaluate_cartoon")
    m = run_evaluation(
        str(model_dir),
        _upstream("models/attribute_classifier"),
        _upstream("metrics/attribute_classifier.json"),
        shards,
        str(work / "eval"),
        str(work / "evaluate_cartoon.json"),
        str(work / "evaluate_cartoon_attributes.json"),
        cfg,
    )
    unguided = m.get(f"{HEADLINE}_{scale_key(0.0)}")  # None when guidance 0 is not among guidance_scales
    return {
        "headline": HEADLINE,
        "value": m[HEADLINE],
        "target": "no numeric target; > guidance 0 " + ("(not sampled)" if unguided is None else f"{unguided:.3f}"),
        "met": unguided is not None and m[HEADLINE] > unguided,
        "recoveries": trained["recoveries"],
        "best_guidance": m["best_guidance"],
        "reliable_attributes": m["reliable_attributes"],
        "accuracy_mean_all": m["accuracy_mean_all"],
        **{k: v for k, v in m.items() if k.startswith(f"{HEADLINE}_guidance_")},
        "final_loss": trained.get("final_loss"),
        "steps": trained.get("steps"),
    }


def run_train_attribute_classifier(params: dict, work: Path) -> dict:
    """train_attribute_classifier's task (its seed is the section's top-level `seed`: SEED_PATHS).
    Headline: its own val_accuracy_mean. It has no target of its own; what the pipeline asks of the
    judge is evaluate_cartoon's rule (params.yaml's evaluate_cartoon section): at least one attribute
    read reliably (evaluate_cartoon fails otherwise). The reliable attributes are recorded."""
    from flows.train_attribute_classifier import train_attribute_classifier_task
    from tasks.cartoon.config import ClassifierConfig
    from tasks.cartoon.evaluate import EvaluateCartoonConfig, judge_ceiling, reliable_attributes
    from tasks.cartoon.loader import load_schema
    from tasks.config.params import stage_params

    config = ClassifierConfig.from_params(params, "train_attribute_classifier")
    shards, metrics_path = _upstream("data/cartoons/shards"), work / "attribute_classifier.json"
    m = train_attribute_classifier_task.fn(shards, str(work / "attribute_classifier"), str(metrics_path), config)
    schema = load_schema(shards)
    ceiling = judge_ceiling(str(metrics_path), list(schema.names))  # as evaluate_cartoon reads it
    cfg = EvaluateCartoonConfig.from_params(stage_params("evaluate_cartoon"), "evaluate_cartoon")
    reliable = reliable_attributes(
        ceiling, dict(zip(schema.names, schema.counts)), cfg.min_ceiling, cfg.min_ceiling_over_chance
    )
    return {
        "headline": "val_accuracy_mean",
        "value": m["val_accuracy_mean"],
        "target": f"none of its own; as judge >= 1 attribute reliable (ceiling >= {cfg.min_ceiling:g} and "
        f">= {cfg.min_ceiling_over_chance:g} x chance): {len(reliable)}",
        "met": bool(reliable),
        "recoveries": 0,  # a plain loop: no divergence guard to recover
        "reliable_attributes": reliable,
        "reliable_ceilings": {n: ceiling[n] for n in reliable},
    }


RUNNERS: dict[str, Callable[[dict, Path], dict]] = {
    "train_vae": run_train_vae,
    "train_ldm": run_train_ldm,
    "train_dreambooth": run_train_dreambooth,
    "train_cartoon": run_train_cartoon,
    "train_attribute_classifier": run_train_attribute_classifier,
}

# Where a stage's training seed lives in its params section (default: training.seed, the engine's).
SEED_PATHS: dict[str, tuple[str, ...]] = {"train_attribute_classifier": ("seed",)}


# ------------------------------------------------------------------------------------------- the sweep

# What decides a run's numbers: the models, losses, loaders and the engine. Not the plumbing around
# them (flows, configs, reporting, code identities), whose edits would otherwise void hours of runs.
RECIPE_CODE = (
    "pipelines/",
    "tasks/training/",
    "tasks/latent/",
    "tasks/cartoon/",
    "tasks/dreambooth/",
    "tasks/evaluation/",
)


# What measures a stage's figure beyond its own flow: (the flows whose recipe code measures it, the
# params sections that code reads). A stage not listed is measured by its own flow (train_vae).
MEASURED_BY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train_ldm": (("evaluate_faces",), ("evaluate_faces",)),
    "train_dreambooth": (("evaluate_faces",), ("evaluate_faces", "dreambooth_base")),
    "train_cartoon": (("evaluate_cartoon",), ("evaluate_cartoon",)),
    "train_attribute_classifier": (("evaluate_cartoon",), ("evaluate_cartoon",)),  # its reliability rule
}


def recipe_identity(stage: str) -> str:
    """The stage's params section and the recipe code its flow imports, with the code and params that
    measure its figure (MEASURED_BY): a changed recipe runs afresh. Code counts as its syntax tree
    without imports and docstrings, so formatting, comments and import order do not count."""
    from tasks.config.params import stage_params
    from tasks.tracking.identity import identity, stage_code

    flows, sections = MEASURED_BY.get(stage, ((), ()))
    files = [
        p
        for p in stage_code([f"flows.{s}" for s in (stage, *flows)])
        if p.relative_to(REPO).as_posix().startswith(RECIPE_CODE)
    ]
    trees = {p.relative_to(REPO).as_posix(): code_tree(p.read_text()) for p in files}
    measured = {s: stage_params(s) for s in sections}
    return identity(trees, stage_params(stage), *([measured] if measured else []))


def code_tree(source: str) -> str:
    """`source`'s syntax tree without its imports and docstrings, as text."""
    import ast

    class Strip(ast.NodeTransformer):
        def visit_Import(self, node):  # noqa: N802 (ast's visitor names)
            return None

        visit_ImportFrom = visit_Import

        def generic_visit(self, node):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and _is_docstring(body[0]):
                node.body = body[1:] or [ast.Pass()]
            return super().generic_visit(node)

    return ast.dump(Strip().visit(ast.parse(source)))


def _is_docstring(node) -> bool:
    import ast

    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def set_seed(params: dict, path: tuple[str, ...], seed: int) -> None:
    """params[path[0]]...[path[-1]] = seed (missing mappings on the way are made)."""
    for key in path[:-1]:
        params = params.setdefault(key, {})
    params[path[-1]] = seed


def one_run(stage: str, seed: int, threads: int, work: Path) -> dict:
    """In this process: set the threads, train, measure."""
    import torch

    from tasks.config.params import stage_params

    torch.set_num_threads(threads)
    params = copy.deepcopy(stage_params(stage))
    set_seed(params, SEED_PATHS.get(stage, ("training", "seed")), seed)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    out = RUNNERS[stage](params, work)
    return {"stage": stage, "seed": seed, "threads": threads, **out, "minutes": (time.perf_counter() - t0) / 60}


def done(results: Path) -> list[dict]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def table(rows: list[dict]) -> str:
    lines = [
        "| stage | seed | threads | headline | value | target | met | recoveries | min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["stage"], r["seed"], r["threads"])):
        value = r.get("value")
        shown = "error" if "error" in r else f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
        lines.append(
            f"| {r['stage']} | {r['seed']} | {r['threads']} | {r.get('headline', '')} | {shown} | "
            f"{r.get('target', '')} | {'yes' if r.get('met') else '**no**'} | {r.get('recoveries', '')} | "
            f"{r.get('minutes', 0):.1f} |"
        )
    by_stage: dict[str, list[dict]] = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append(r)
    for stage, rs in sorted(by_stage.items()):
        values = [r["value"] for r in rs if isinstance(r.get("value"), (int, float))]
        spread = f"{min(values):.4g} to {max(values):.4g}" if values else "no figure"
        lines.append(
            f"\n{stage}: {sum(bool(r.get('met')) for r in rs)} of {len(rs)} runs at target; "
            f"headline {spread}; recoveries {sum(r.get('recoveries') or 0 for r in rs)}"
        )
    return "\n".join(lines)


def parse_range(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default=",".join(DEFAULT_GRID), help="comma-separated stages")
    ap.add_argument("--seeds", default=None, help="e.g. 0-4 or 0,2 (default: the stage's grid)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--work", type=Path, default=REPO / ".sweep")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--table", action="store_true", help="print the table of the runs so far and exit")
    ap.add_argument("--one", nargs=3, metavar=("STAGE", "SEED", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:  # the child process of one run: its result as the last line of stdout
        stage, seed, threads = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(one_run(stage, seed, threads, args.work / f"{stage}-{seed}-{threads}")), flush=True)
        return
    if args.table:
        print(table(done(args.results)))
        return
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for stage in args.stages.split(","):
        if stage not in RUNNERS:
            sys.exit(f"no sweep runner for {stage!r}; have: {', '.join(RUNNERS)}")
        recipe = recipe_identity(stage)
        seeds = parse_range(args.seeds) if args.seeds else list(DEFAULT_GRID[stage])
        for seed in seeds:
            for threads in parse_range(args.threads):
                key = (stage, seed, threads, recipe)
                if any((r["stage"], r["seed"], r["threads"], r.get("recipe")) == key for r in done(args.results)):
                    continue
                print(f"sweep: {stage} seed {seed} threads {threads} ...", flush=True)
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FACEDIFF_PROGRESS": "off"}
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.sweep_stability",
                        "--work",
                        str(args.work),
                        "--one",
                        stage,
                        str(seed),
                        str(threads),
                    ],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if proc.returncode == 0:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                else:  # a failed run (a DivergenceError among them) is a row too: never a silent gap
                    reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    row = {"stage": stage, "seed": seed, "threads": threads, "met": False, "error": reason}
                row["recipe"] = recipe
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(
                    f"sweep: {stage} seed {seed} threads {threads}: {row.get('value', row.get('error'))} "
                    f"(met: {row['met']})",
                    flush=True,
                )
    print(table(done(args.results)))


if __name__ == "__main__":
    main()

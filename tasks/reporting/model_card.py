"""Model cards: the `README.md` a training stage writes into the model folder it saved.

The convention diffusers and the Hugging Face hub use: YAML front matter (`library_name`, `license`,
`tags`, `base_model` for a fine-tune), then what the model is, the lines that load and sample it, its
sample grid, what it achieves against its targets, its data and how it was made (the stage's params,
the git commit, the code's identity). Everything in a card is read from what the stages wrote (the
metrics JSON, the folder's own files, the data manifests), so the card cannot disagree with them
(tests/models/test_model_card.py checks it).

What a model achieves is mostly measured after its training stage, by an evaluation stage (RESULTS):
the card shows that evaluation's figures only when its metrics file names this very folder (a hash of
the folder's files, `pipelines.folders.folder_identity`); otherwise, as after every fresh training
run, it says which stage writes them where, with the targets they will be held to.

A folder saved with its code (`pipelines.portable.save_portable`) gets a snippet that needs
diffusers alone (`trust_remote_code=True`); a folder without (a LoRA adapter, the cartoon model, the
face VAE today) gets one that imports this project's `pipelines`, and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.folders import ADAPTER_RECORD, CARD, CARD_GRID, folder_identity, model_folder
from pipelines.schedulers import scheduler_code
from tasks.evaluation.targets import CLASS_DRIFT, ID_ABOVE_BASE, ID_CEILING_SHARE
from tasks.tracking.identity import PACKAGES, REPO, code_identity, data_identity, stage_code

# What each training stage's folder is (title, tags, one paragraph).
STAGES = {
    "train_cartoon": (
        "Attribute-conditional cartoon diffusion",
        ["cartoon", "class-conditional", "ddpm"],
        "A pixel-space DDPM that draws cartoon avatars for given Cartoon Set attributes "
        "(hair colour, face colour, glasses, ...), with classifier-free guidance: a dict of attribute "
        "indices per image; attributes left out are drawn uniformly at random.",
    ),
    "train_vae": (
        "Face autoencoder",
        ["autoencoder", "vae", "faces"],
        "The KL autoencoder of the face track: aligned face images <-> latents that the latent diffusion "
        "model is trained on. It reconstructs images; it does not sample them.",
    ),
    "train_ldm": (
        "Unconditional face latent diffusion",
        ["latent-diffusion", "unconditional-image-generation", "faces"],
        "An unconditional UNet2DModel denoising the face autoencoder's latents, decoded by that autoencoder "
        "(saved with it in `vae/`): aligned faces from noise.",
    ),
    "train_dreambooth": (
        "DreamBooth subject model",
        ["dreambooth", "faces", "latent-diffusion"],
        "The face latent diffusion model fine-tuned on one subject's photos with prior preservation. "
        "With an identifier (a 2-row class embedding) it draws the subject (label 1) or the general "
        "class (label 0); `guidance_scale` guides from the class towards the subject.",
    ),
}

# Data source -> (hub license id, license_name for `other`, what it means).
LICENSES = {
    "synthetic": (
        "other",
        "facediff-synthetic",
        "synthetic images drawn by this project's own generators: no third-party images, the project's own terms",
    ),
    "cartoonset": ("cc-by-4.0", None, "Cartoon Set (Google), CC BY 4.0: credit Google's Cartoon Set"),
    "ffhq": ("cc-by-nc-sa-4.0", None, "FFHQ (NVIDIA), CC BY-NC-SA 4.0: non-commercial, share alike"),
    "folder": ("other", "user-photos", "a folder of photos the user supplied: their owners' terms"),
}
UNKNOWN = ("other", "unknown", "data whose source its manifests do not name")


# ---------------------------------------------------------------------------------------------- the card


def write_model_card(
    model_dir: str | Path,
    *,
    stage: str,
    params: dict,
    metrics_path: str | Path,
    data_dirs: list[str | Path],
    sample_grid: str | Path | None = None,
    base_model: str | Path | None = None,
) -> Path:
    """Write `model_dir/README.md` for the folder `stage` just saved. `params`: the stage's params
    section; `metrics_path`: the JSON the stage wrote; `data_dirs`: the dataset folders it trained on
    (identity: their manifest's hash; license: traced from the manifests); `sample_grid`: a PNG, copied
    into the folder; `base_model`: the folder or hub id a fine-tune (or a copied pretrained model)
    started from."""
    model_dir = Path(model_dir)
    licenses = _licenses(data_dirs, base_model)
    grid = _copy_grid(sample_grid, model_dir)
    title, tags, about = STAGES[stage]
    sections = [
        front_matter(model_dir, stage, tags, licenses, base_model),
        f"# {title}\n\n{about}\n\nWritten by the `{stage}` stage of facediff"
        + (f", starting from `{base_model}`." if base_model else "."),
        usage_section(model_dir, params),
        f"## Samples\n\n![samples]({grid})" if grid else None,
        results_section(model_dir, stage, params, Path(metrics_path)),
        data_section(data_dirs, licenses),
        provenance_section(stage, params),
    ]
    path = model_dir / CARD
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n\n".join(s for s in sections if s) + "\n")
    os.replace(tmp, path)  # never a half-written card
    return path


def last_grid(live_dir: str | Path) -> Path | None:
    """The newest sample grid the training engine logged (dvclive `plots/images/samples/epoch-NNN.png`)."""
    grids = sorted((Path(live_dir) / "plots" / "images" / "samples").glob("*.png"))
    return grids[-1] if grids else None


def _copy_grid(sample_grid: str | Path | None, model_dir: Path) -> str | None:
    if sample_grid is None or not Path(sample_grid).is_file():
        return None
    shutil.copyfile(sample_grid, model_dir / CARD_GRID)
    return CARD_GRID


def front_matter(model_dir: Path, stage: str, tags: list[str], licenses: list[tuple], base_model) -> str:
    license_id, license_name, _ = _combined(licenses)
    meta: dict[str, Any] = {"library_name": "diffusers", "license": license_id}
    if license_name:
        meta["license_name"] = license_name
    adapter = model_folder(model_dir).kind == "lora"
    meta["tags"] = ["diffusers", "facediff", *tags] + (["lora"] if adapter else [])
    if base_model:
        meta["base_model"] = str(base_model)
        if stage == "train_dreambooth":  # a pretrained VAE copied by train_vae is neither
            meta["base_model_relation"] = "adapter" if adapter else "finetune"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---"


# ---------------------------------------------------------------------------------------------- usage


def usage_section(model_dir: Path, params: dict) -> str:
    code, needs = usage(model_dir, params)
    cli = (
        ""
        if model_folder(model_dir).kind in ("autoencoder", "model")
        else (
            f"\n\nWith this project, a grid without code: `python -m pipelines.sample {model_dir} --num-images 16 "
            f"--seed 0 --out grid.png`."
        )
    )
    return f"## Use\n\n{needs}\n\n```python\n{code}```{cli}"


def usage(model_dir: Path, params: dict) -> tuple[str, str]:
    """(a snippet that loads the folder and samples from it, what the snippet needs)."""
    path = json.dumps(str(model_dir))  # a double-quoted Python string
    folder = model_folder(model_dir)
    if folder.kind == "lora":
        record = json.loads((model_dir / ADAPTER_RECORD).read_text())
        load = (
            f"from pipelines.dreambooth import load_subject_pipeline\n"
            f"pipe = load_subject_pipeline({path})  # onto its base, {record['base_dir']}\n"
        )
        call = _subject_call(bool(record["identifier"]), params)
        return _snippet(load, params, call), (
            "A LoRA adapter, not a whole model: this project's `pipelines` and `peft` put it onto its base model."
        )
    if folder.kind in ("autoencoder", "model"):
        return _autoencoder_usage(model_dir)
    name = folder.class_name
    if folder.code_file:
        load = (
            f"from diffusers import DiffusionPipeline\n"
            f"pipe = DiffusionPipeline.from_pretrained({path}, trust_remote_code=True)\n"
        )
        needs = f"diffusers alone: the folder carries its pipeline's code (`{folder.code_file}`)."
    else:
        module = "pipelines.dreambooth" if folder.kind == "dreambooth" else "pipelines"  # pipelines/__init__.py's
        load = f"from {module} import {name}\npipe = {name}.from_pretrained({path})\n"
        needs = "This project's `pipelines` package (the folder does not carry its pipeline's code) and diffusers."
    return _snippet(load, params, _pipeline_call(folder.kind, model_dir, params)), needs


def _snippet(load: str, params: dict, call: str) -> str:
    """imports, load, the stage's sampler (the saved scheduler is the training one), the call."""
    samples = params.get("samples") or {}
    imports, scheduler = "import torch\n", ""
    if samples.get("scheduler"):
        cls, build = scheduler_code(samples["scheduler"])
        imports += f"from diffusers import {cls}\n"
        scheduler = f"pipe.scheduler = {build}  # the stage's sampler\n"
    return f'{imports}{load}{scheduler}{call}images[0].save("sample.png")\n'


def _pipeline_call(kind: str, model_dir: Path, params: dict) -> str:
    if kind == "cartoon":
        first = json.loads((model_dir / "tau" / "config.json").read_text())["attribute_names"][0]
        return (
            f"images = pipe([{{{json.dumps(first)}: 0}}] * 4,  # one dict per image; unnamed attributes at random\n"
            f"              guidance_scale={_samples(params, 'guidance_scale')}, "
            f"{_steps(params)}generator=torch.Generator().manual_seed(0)).images\n"
        )
    if kind == "dreambooth":
        unet = json.loads((model_dir / "unet" / "config.json").read_text())
        return _subject_call(unet.get("num_class_embeds") is not None, params)
    return f"images = pipe(batch_size=4, {_steps(params)}generator=torch.Generator().manual_seed(0)).images\n"


def _subject_call(identifier: bool, params: dict) -> str:
    if not identifier:
        return f"images = pipe(batch_size=4, {_steps(params)}generator=torch.Generator().manual_seed(0)).images\n"
    return (
        f"images = pipe(batch_size=4, guidance_scale={_samples(params, 'guidance_scale')}, {_steps(params)}"
        f"generator=torch.Generator().manual_seed(0)).images  # the subject\n"
        f"classes = pipe(batch_size=4, subject=False, {_steps(params)}"
        f"generator=torch.Generator().manual_seed(0)).images  # the general class\n"
    )


def _samples(params: dict, key: str):
    return (params.get("samples") or {})[key]


def _steps(params: dict) -> str:
    steps = (params.get("samples") or {}).get("num_inference_steps")
    return f"num_inference_steps={steps}, " if steps else ""


def _autoencoder_usage(model_dir: Path) -> tuple[str, str]:
    config = json.loads((model_dir / "config.json").read_text())
    name, size = config["_class_name"], int(config.get("sample_size") or 64)
    if name == "PatchAutoencoderKL":
        load, needs = "from pipelines import PatchAutoencoderKL\n", "This project's `pipelines` package and diffusers."
    else:
        load, needs = f"from diffusers import {name}\n", "diffusers alone."
    encode = "vae.encode(x).latents" if name == "VQModel" else "vae.encode(x).latent_dist.mean"
    code = (
        f"import torch\n{load}vae = {name}.from_pretrained({json.dumps(str(model_dir))})\n"
        f"x = torch.rand(1, 3, {size}, {size}) * 2 - 1  # an image in [-1, 1]\n"
        f"with torch.no_grad():\n"
        f"    z = {encode} * vae.config.scaling_factor  # what the diffusion model sees\n"
        f"    reconstruction = vae.decode(z / vae.config.scaling_factor).sample\n"
    )
    return code, f"{needs} An autoencoder reconstructs; it does not sample."


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Figure:
    """One figure of what a model achieves, in the metrics file of the stage that measures it."""

    key: str  # its key in that file
    what: str  # what it says
    target: Callable[[dict, dict], str]  # (that file's figures, {} before they exist; the stage's params) -> words
    verdict: str | None = None  # that file's met flag for it; None: no target of its own


@dataclass(frozen=True)
class Results:
    by: str | None  # the stage that measures the model; None: the training stage, in its own metrics
    metrics: str | None  # that stage's metrics file, relative to where stages run (dvc.yaml's paths)
    folder_key: str | None  # its key naming the folder it measured (pipelines.folders.folder_identity)
    figures: tuple[Figure, ...]


def _of(m: dict, key: str, spec: str = ".2f") -> str:
    """` (0.58)`: a figure the target is relative to, once measured; nothing before."""
    value = m.get(key)
    return f" ({value:{spec}})" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


RESULTS = {
    "train_vae": Results(
        None,
        None,
        None,
        (
            Figure(
                "psnr_gain_over_bilinear_db",
                "validation PSNR gain over bilinear upsampling from the latent size (dB)",
                lambda m, p: f">= {p['min_gain_over_bilinear_db']:g} dB (params min_gain_over_bilinear_db)",
                "target_met",
            ),
            Figure(
                "val_images",
                "validation faces the PSNR is measured on",
                lambda m, p: f">= {p['min_val_images']} (params min_val_images)",
                "reliable",
            ),
        ),
    ),
    "train_ldm": Results(
        "evaluate_faces",
        "metrics/evaluate_faces.json",
        "base_folder_identity",
        (
            Figure(
                "face_detect_rate",
                "samples with a face found (dlib)",
                lambda m, p: (
                    f">= evaluate_faces.min_detect_ratio x the real faces' rate{_of(m, 'face_detect_rate_real')}"
                ),
                "detect_rate_ok",
            ),
            Figure(
                "kid_dlib",
                "KID to real faces (dlib features)",
                lambda m, p: (
                    f"nearer real vs real{_of(m, 'kid_dlib_floor', '.2g')} than the untrained model"
                    f"{_of(m, 'kid_dlib_untrained', '.2g')}"
                ),
                "kid_ok",
            ),
            Figure(
                "fd_dlib",
                "Frechet distance to real faces (dlib features)",
                lambda m, p: f"none of its own; real vs real{_of(m, 'fd_dlib_floor', '.3f')}",
            ),
        ),
    ),
    "train_dreambooth": Results(
        "evaluate_faces",
        "metrics/evaluate_faces.json",
        "subject_folder_identity",
        (
            Figure(
                "id_top1",
                "subject samples whose nearest photo identity is the subject's (dlib)",
                lambda m, p: (
                    f">= {ID_CEILING_SHARE:g} x the photos' own id_top1{_of(m, 'id_top1_ceiling')} and >= "
                    f"the base model's{_of(m, 'id_top1_base')} + {ID_ABOVE_BASE:g}"
                ),
                "subject_identity_ok",
            ),
            Figure(
                "id_top1_class",
                "the same for class samples (label 0): prior preservation",
                lambda m, p: f"within {CLASS_DRIFT:g} of the base model's{_of(m, 'id_top1_base')}",
                "subject_prior_ok",
            ),
        ),
    ),
    "train_cartoon": Results(
        "evaluate_cartoon",
        "metrics/evaluate_cartoon.json",
        "model_folder_identity",
        (
            Figure(
                "reliable_accuracy_vs_ceiling",
                "attribute accuracy / the judge's ceiling, over the attributes the "
                "judge reads reliably, at the best guidance",
                lambda m, p: (
                    "none numeric; compare guidance 0, no conditioning"
                    f"{_of(m, 'reliable_accuracy_vs_ceiling_guidance_0', '.3f')}"
                ),
            ),
        ),
    ),
}


def cell(value: Any) -> str:
    """A table cell: a float to 4 significant digits, anything else as JSON."""
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def _verdict(m: dict, figure: Figure) -> str:
    if figure.verdict is None:
        return "no target of its own"
    return {True: "met", False: "**missed**"}.get(m.get(figure.verdict), f"not recorded (`{figure.verdict}`)")


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def results_section(model_dir: Path, stage: str, params: dict, metrics_path: Path) -> str:
    """What the model achieves, each figure with its target and met/missed (RESULTS)."""
    spec = RESULTS[stage]
    source = metrics_path if spec.metrics is None else Path(spec.metrics)
    m = _read(source)
    if m is not None and spec.folder_key is not None and m.get(spec.folder_key) != folder_identity(model_dir):
        m, why = None, "held figures of another model folder (the one this folder replaced)"
    else:
        why = "did not exist"
    if m is None:
        head = (
            f"Measured after this stage: `dvc repro {spec.by}` writes these figures to `{source}`, under the "
            f"keys below. When this card was written that file {why}."
        )
        rows = [f"| `{f.key}`: {f.what} | pending | {f.target({}, params)} | pending |" for f in spec.figures]
    else:
        head = f"From `{source}`, " + (
            f"written by `{spec.by}` for this folder." if spec.by else "as the stage wrote it."
        )
        rows = [
            f"| `{f.key}`: {f.what} | {cell(m.get(f.key))} | {f.target(m, params)} | {_verdict(m, f)} |"
            for f in spec.figures
        ]
    training = f"\n\nTraining figures (steps, final losses): `{metrics_path}`." if spec.metrics else ""
    return (
        f"## Results\n\n{head}\n\n| figure | value | target | met |\n| --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + training
    )


# ---------------------------------------------------------------------------------------------- data


def data_section(data_dirs: list[str | Path], licenses: list[tuple]) -> str:
    rows = [f"- `{d}`: manifest sha256 `{data_identity(d)}`" for d in data_dirs]
    terms = "\n".join(f"- {words}" for _, _, words in dict.fromkeys(licenses))
    return (
        "## Data\n\nTrained on (identity: the hash of each dataset's manifest.json):\n\n"
        + "\n".join(rows)
        + f"\n\nLicense of the data, traced from the manifests:\n\n{terms}"
    )


def _licenses(data_dirs: list[str | Path], base_model) -> list[tuple]:
    found = [lic for d in data_dirs for lic in data_licenses(Path(d))]
    if base_model is not None and Path(base_model).is_dir():
        found.append(model_license(Path(base_model)))
    return list(dict.fromkeys(found)) or [UNKNOWN]


def _combined(licenses: list[tuple]) -> tuple:
    """One license for the front matter: the only one (however many sources share it), or `other`
    naming the mix."""
    words = "; ".join(words for _, _, words in licenses)
    kinds = {(license_id, name) for license_id, name, _ in licenses}
    return (*kinds.pop(), words) if len(kinds) == 1 else ("other", "mixed", words)


def data_licenses(data_dir: Path) -> list[tuple]:
    """Follow a dataset's manifests back to where its images came from."""
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        return [UNKNOWN]
    manifest = json.loads(manifest_path.read_text())
    source = manifest.get("source")
    if isinstance(manifest.get("base"), dict) and "dir" in manifest["base"]:  # class samples: the base's data
        return [model_license(Path(manifest["base"]["dir"]))]
    if isinstance(source, dict) and "dir" in source:  # latents -> the aligned faces they encode
        return data_licenses(Path(source["dir"]))
    if isinstance(source, str):  # cartoon shards -> the raw folder, whose fetch.json names the source
        return [_cartoon_license(Path(source) / "fetch.json")]
    if manifest.get("kind") == "faces_aligned":
        return [_face_license(data_dir, manifest)]
    return [UNKNOWN]


def _cartoon_license(fetch_json: Path) -> tuple:
    if not fetch_json.is_file():
        return UNKNOWN
    source = json.loads(fetch_json.read_text())["source"]
    if source == "synthetic":
        return LICENSES["synthetic"]
    return LICENSES["cartoonset"] if source.startswith("cartoonset") else LICENSES["folder"]


def _face_license(data_dir: Path, manifest: dict) -> tuple:
    """Aligned faces keep their raw record's `source` field: synthetic and folder photos have one; FFHQ
    entries (fetched by their metadata) are the ones with a `file` and no `source`."""
    shards = manifest.get("all_shards") or [s for split in manifest["splits"].values() for s in split["shards"]]
    if not shards:
        return UNKNOWN
    with tarfile.open(data_dir / shards[0]) as tar:
        member = next((m for m in tar if m.name.endswith(".json")), None)
        if member is None:
            return UNKNOWN
        record = json.loads(tar.extractfile(member).read())
    if "source" not in record:
        return LICENSES["ffhq"] if "file" in record else UNKNOWN
    return LICENSES.get(record["source"], UNKNOWN)


def model_license(model_dir: Path) -> tuple:
    """A model's data license, from its own card's front matter."""
    card = model_dir / CARD
    if not card.is_file():
        return UNKNOWN
    meta = read_front_matter(card.read_text())
    license_id = meta.get("license", UNKNOWN[0])
    words = f"the data of the base model `{model_dir}` ({meta.get('license_name') or license_id})"
    return (license_id, meta.get("license_name"), words)


def read_front_matter(text: str) -> dict:
    if not text.startswith("---\n"):
        raise ValueError("a model card starts with YAML front matter between --- lines")
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


# ---------------------------------------------------------------------------------------------- provenance


def git_state(stage: str | None = None) -> dict[str, Any]:
    """The newest commit that changed the stage's code (its module import closure) and whether that code
    has uncommitted changes (None for both outside a git checkout). Not HEAD: a card must be a function
    of the stage's deps, so that `dvc repro -f`, a later commit or the GPU worker write the same bytes."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    files = [p.relative_to(REPO).as_posix() for p in stage_code([f"flows.{stage}"], REPO)] if stage else list(PACKAGES)
    commit = git("log", "-1", "--format=%H", "--", *files)
    if not commit:
        return {"commit": None, "dirty": None}
    changes = git("status", "--porcelain", "--", *files)
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def provenance_section(stage: str, params: dict) -> str:
    state = git_state(stage)
    dirty = {True: " plus uncommitted changes to it", False: " (clean)", None: " (changes unknown)"}[state["dirty"]]
    commit = f"its code as of git commit `{state['commit']}`{dirty}" if state["commit"] else "outside a git checkout"
    return (
        f"## How it was made\n\n- stage `{stage}` (`dvc repro {stage}`), {commit}\n"
        f"- code identity `{code_identity(stage)}` (the stage's code and library versions: "
        f"tasks/tracking/identity.py)\n\n"
        f"The stage's params (params.yaml `{stage}:`):\n\n```yaml\n"
        + yaml.safe_dump({stage: params}, sort_keys=False)
        + "```"
    )

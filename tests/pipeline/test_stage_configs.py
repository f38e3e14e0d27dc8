"""params.yaml is the one source of configuration: every section reads into its stage's typed
config, and a key a stage does not know, or one it lacks, is an error that names it."""

import inspect
import typing

import pytest

from tasks.cartoon.config import ClassifierConfig, FetchCartoonsConfig, PreprocessCartoonsConfig, TrainCartoonConfig
from tasks.cartoon.evaluate import EvaluateCartoonConfig
from tasks.config.params import apply_profile, load_params
from tasks.config.typed import ConfigError
from tasks.dreambooth.config import EncodeSubjectConfig, SampleClassConfig, TrainDreamboothConfig
from tasks.evaluation.faces import EvaluateFacesConfig
from tasks.faces.config import AlignFacesConfig, FetchFacesConfig, PrepareSubjectConfig
from tasks.latent.config import EncodeLatentsConfig, TrainLdmConfig, TrainVaeConfig
from tasks.training.config import TrainConfig
from tests.helpers.configs import REPO, section

CONFIGS = {
    "fetch_cartoons": FetchCartoonsConfig,
    "preprocess_cartoons": PreprocessCartoonsConfig,
    "train_cartoon": TrainCartoonConfig,
    "train_attribute_classifier": ClassifierConfig,
    "fetch_faces": FetchFacesConfig,
    "align_faces": AlignFacesConfig,
    "prepare_subject": PrepareSubjectConfig,
    "train_vae": TrainVaeConfig,
    "encode_latents": EncodeLatentsConfig,
    "train_ldm": TrainLdmConfig,
    "encode_subject": EncodeSubjectConfig,
    "sample_class": SampleClassConfig,
    "train_dreambooth": TrainDreamboothConfig,
    "evaluate_faces": EvaluateFacesConfig,
    "evaluate_cartoon": EvaluateCartoonConfig,
}
FLOWS = {stage: f"flows.{stage}" for stage in CONFIGS}


def test_every_stage_of_dvc_yaml_has_a_config_here():
    stages = set(load_params(REPO / "dvc.yaml")["stages"])
    assert stages == set(CONFIGS)


@pytest.mark.parametrize("stage", sorted(CONFIGS))
def test_every_section_parses_into_its_config(stage):
    cfg = CONFIGS[stage].from_params(load_params(REPO / "params.yaml")[stage], stage)
    assert cfg.to_dict() == section(stage)  # nothing added, nothing lost


@pytest.mark.parametrize("profile", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_profile_parses(tmp_path, profile):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    params = apply_profile(REPO / "configs" / profile, tmp_path / "params.yaml")
    for stage, cls in CONFIGS.items():
        cls.from_params(params[stage], stage)


def test_an_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"align_faces: unknown key\(s\) \['shard_sise'\]"):
        AlignFacesConfig.from_params(section("align_faces", shard_sise=10), "align_faces")
    training = section("train_ldm")
    training["training"]["learning_rte"] = 1.0
    with pytest.raises(ConfigError, match=r"train_ldm.training: unknown key\(s\) \['learning_rte'\]"):
        TrainLdmConfig.from_params(training, "train_ldm")


def test_a_missing_key_is_named():
    params = section("train_cartoon")
    del params["samples"]["guidance_scale"]
    with pytest.raises(ConfigError, match=r"train_cartoon.samples: missing key\(s\) \['guidance_scale'\]"):
        TrainCartoonConfig.from_params(params, "train_cartoon")
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig.from_params({k: v for k, v in section("train_ldm")["training"].items() if k != "mixed_precision"})


def test_flows_take_paths_and_params_without_defaults():
    import importlib

    for stage, module in FLOWS.items():
        fn = getattr(importlib.import_module(module), stage).fn
        sig = inspect.signature(fn)
        assert list(sig.parameters)[-1] == "params", stage
        assert all(p.default is inspect.Parameter.empty for p in sig.parameters.values()), stage


@pytest.mark.parametrize(
    "stage, key, value, expected",
    [
        ("preprocess_cartoons", "crop", "three hundred", "int"),
        ("preprocess_cartoons", "val_fraction", True, "float"),
        ("align_faces", "enable_padding", 0, "bool"),
        ("fetch_faces", "source", 3, "str"),
        ("preprocess_cartoons", "background", "white", "list[int]"),
    ],
)
def test_a_wrong_type_is_named_with_its_value(stage, key, value, expected):
    with pytest.raises(ConfigError) as err:
        CONFIGS[stage].from_params(section(stage, **{key: value}), stage)
    assert str(err.value) == f"{stage}.{key}: expected {expected}, got {value!r} ({type(value).__name__})"


def test_a_wrong_type_in_a_nested_section_is_named():
    params = section("train_ldm")
    params["training"]["mixed_precision"] = False  # what a YAML 1.1 reader makes of an unquoted `no`
    with pytest.raises(ConfigError, match=r"^train_ldm.training.mixed_precision: expected str, got False \(bool\)$"):
        TrainLdmConfig.from_params(params, "train_ldm")


@pytest.mark.parametrize(
    "stage, keys",
    [
        ("train_ldm", ["samples", "scheduler"]),
        ("train_dreambooth", ["samples", "scheduler"]),
        ("train_cartoon", ["samples", "scheduler"]),
        ("sample_class", ["scheduler"]),
        ("evaluate_faces", ["scheduler"]),
        ("evaluate_cartoon", ["scheduler"]),
    ],
)
def test_an_unknown_sampler_is_named_at_start_up(stage, keys):
    """Not at the first sample grid, minutes into training: one line, the key and the names allowed."""
    params = section(stage)
    node = params
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = "euler"
    where = ".".join([stage, *keys])
    with pytest.raises(ConfigError, match=rf"^{where} must be one of ddpm, ddim, dpm, dpm_sde, got 'euler'$"):
        CONFIGS[stage].from_params(params, stage)


def test_the_sampler_names_are_the_schedulers_pipelines_builds():
    """tasks/config/samples.py writes the names out (importing pipelines costs the data stages torch)."""
    from pipelines.schedulers import SCHEDULERS
    from tasks.config.samples import SamplerName

    assert list(typing.get_args(SamplerName)) == list(SCHEDULERS)


def test_params_are_read_as_yaml_1_2_the_way_dvc_writes_them(tmp_path):
    """`dvc exp run -S` drops the quotes around "no"; YAML 1.2 still reads a string."""
    (tmp_path / "params.yaml").write_text("s:\n  mixed_precision: no\n  flag: on\n  real: false\n")
    assert load_params(tmp_path / "params.yaml")["s"] == {"mixed_precision": "no", "flag": "on", "real": False}

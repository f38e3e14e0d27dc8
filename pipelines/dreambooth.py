"""A face LDM fine-tuned on one subject (DreamBooth), optionally with a subject identifier.

`SubjectDiffusionPipeline(unet, vae, scheduler)` is `LatentDiffusionPipeline` plus one choice: with
an identifier (a `UNet2DModel` with `num_class_embeds=2`, the embedding added to the time
embedding) `subject=True` samples with class label 1 (the subject) and `subject=False` with label 0
(the general class the base model drew); without one (`has_identifier` False) there is only one
model and `subject` must stay True.

A LoRA fine-tune is saved as an adapter folder (ADAPTER_FILE, ADAPTER_CONFIG, ADAPTER_RECORD), not a whole
pipeline: `load_subject_pipeline(dir)` rebuilds the model on its base, whose paths (relative to the
adapter folder, tried first, and absolute) and identity the record holds (`base_reference`), and
refuses a base whose weights changed since: the adapter loads from any cwd, and after the project
folder (adapter and base together) or the adapter alone is moved.

Inference only, importable alone: nothing here imports `tasks` or `flows`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from pipelines.folders import ADAPTER_RECORD
from pipelines.identity import module_identity
from pipelines.latent import LatentDiffusionPipeline
from pipelines.ldm_base import load_latent_base
from pipelines.outputs import check_output_type, to_output

ADAPTER_FILE = "adapter_model.safetensors"  # LoRA weights (+ the identifier's embedding when there is one)
ADAPTER_CONFIG = "adapter_config.json"  # peft LoraConfig
SUBJECT_LABEL, CLASS_LABEL = 1, 0


def with_identifier(base: UNet2DModel) -> UNet2DModel:
    """A copy of `base` with a 2-row class embedding initialised to zero: it computes exactly what
    `base` computes for either label until training moves the embedding."""
    if base.config.num_class_embeds is not None or base.config.class_embed_type is not None:
        raise ValueError("the base UNet already has a class embedding; an identifier needs an unconditional base")
    # Private keys dropped: `_use_default_values` would make from_config ignore num_class_embeds
    # whenever the base was built in code rather than loaded (its value was a default there).
    config = {k: v for k, v in dict(base.config).items() if not k.startswith("_")}
    unet = UNet2DModel.from_config({**config, "num_class_embeds": 2})
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise RuntimeError(f"base weights do not fit the identifier UNet: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(unet.class_embedding.weight)
    return unet.to(device=base.device, dtype=base.dtype)


class SubjectDiffusionPipeline(LatentDiffusionPipeline):
    """Sample the fine-tuned subject (or, with an identifier, the general class)."""

    @property
    def has_identifier(self) -> bool:
        return self.unet.config.num_class_embeds is not None

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        subject: bool = True,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_scale: float = 1.0,
    ):
        """Sample `batch_size` images of the subject (`subject=True`) or of the class (`False`,
        identifier only). `guidance_scale` (identifier, subject samples only) is classifier-free
        guidance with the class label as the unconditional: eps_class + s * (eps_subject - eps_class);
        1.0 is the subject label alone, larger pushes further from the class towards the subject.
        Other arguments as `LatentDiffusionPipeline.__call__`."""
        if not subject and not self.has_identifier:
            raise ValueError(
                "subject=False needs a model trained with an identifier (train_dreambooth.identifier: "
                "true); this one has no class embedding"
            )
        guided = float(guidance_scale) != 1.0
        if guided and not (subject and self.has_identifier):
            raise ValueError(
                f"guidance_scale {guidance_scale} needs subject=True and a model with an identifier: "
                "it guides from the class label towards the subject label"
            )
        if int(batch_size) < 1 or int(num_inference_steps) < 1:
            raise ValueError(
                f"batch_size and num_inference_steps must be >= 1, got {batch_size}, {num_inference_steps}"
            )
        check_output_type(output_type, extra=("latent",))
        shape = (int(batch_size), *self.latent_shape)
        device = self._execution_device
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(device, self.unet.dtype)
        labels = None
        if self.has_identifier:
            labels = torch.full((shape[0],), SUBJECT_LABEL if subject else CLASS_LABEL, device=device, dtype=torch.long)
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        latents = latents * self.scheduler.init_noise_sigma
        if guided:  # one UNet call on [class; subject] rows
            labels = torch.cat([torch.full_like(labels, CLASS_LABEL), labels])
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(latents, t)
            if guided:
                eps_class, eps_subject = self.unet(torch.cat([model_input] * 2), t, class_labels=labels).sample.chunk(2)
                noise_pred = eps_class + float(guidance_scale) * (eps_subject - eps_class)
            else:
                noise_pred = self.unet(model_input, t, class_labels=labels).sample
            latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
        self.maybe_free_model_hooks()
        if output_type == "latent":
            return ImagePipelineOutput(images=latents) if return_dict else (latents,)
        return to_output(self.decode_latents(latents), output_type, return_dict)


def is_adapter_dir(model_dir: str | Path) -> bool:
    return (Path(model_dir) / ADAPTER_RECORD).is_file()


def load_subject_pipeline(model_dir: str | Path, base_dir: str | Path | None = None) -> SubjectDiffusionPipeline:
    """The fine-tuned model in `model_dir`: a saved `SubjectDiffusionPipeline` (full fine-tune), or a
    LoRA adapter put onto its base (`base_dir`, default: the path the adapter recorded)."""
    model_dir = Path(model_dir)
    if (model_dir / "model_index.json").is_file():
        return SubjectDiffusionPipeline.from_pretrained(str(model_dir))
    if not is_adapter_dir(model_dir):
        raise FileNotFoundError(
            f"{model_dir} holds neither a pipeline (model_index.json) nor a DreamBooth adapter ({ADAPTER_RECORD})"
        )
    record = json.loads((model_dir / ADAPTER_RECORD).read_text())
    base = resolve_base(model_dir, record, base_dir)
    unet = apply_adapter(base.unet, model_dir, identifier=bool(record["identifier"]))
    return SubjectDiffusionPipeline(unet=unet, vae=base.vae, scheduler=base.scheduler)


def base_reference(base_dir: str | Path, adapter_dir: str | Path, base_unet_identity: str) -> dict:
    """What an adapter's record says of its base: where it is from the adapter folder and from `/`,
    and which UNet it is."""
    absolute = Path(base_dir).resolve()
    return {
        "base_dir": str(absolute),
        "base_dir_relative": os.path.relpath(absolute, Path(adapter_dir).resolve()),
        "base_unet_identity": base_unet_identity,
    }


def resolve_base(model_dir: Path, record: dict, base_dir: str | Path | None = None) -> LatentDiffusionPipeline:
    """The adapter's base: `base_dir` if given, else the first of the recorded paths (relative to the
    adapter folder, then absolute; records before the relative one: the path as given at training)
    that holds a pipeline whose UNet is the recorded one."""
    tried = {}
    rel = record.get("base_dir_relative")
    for cand in [Path(base_dir)] if base_dir else ([model_dir / rel] if rel else []) + [Path(record["base_dir"])]:
        if os.path.realpath(cand) in map(os.path.realpath, tried):
            continue  # both paths lead to the same folder
        if not (cand / "model_index.json").is_file():
            tried[str(cand)] = "missing"
            continue
        base = load_latent_base(cand)  # this project's layout or diffusers' LDMPipeline's
        found = module_identity(base.unet)
        if found == record["base_unet_identity"]:
            return base
        tried[str(cand)] = f"holds UNet {found}"
    if all(v == "missing" for v in tried.values()):
        raise FileNotFoundError(f"the adapter's base model is missing (tried {', '.join(tried)}; pass base_dir=)")
    raise ValueError(
        f"{model_dir} is an adapter for base UNet {record['base_unet_identity']}, but "
        + "; ".join(f"{k}: {v}" for k, v in tried.items())
        + ": retrain the adapter or point base_dir at its base"
    )


def apply_adapter(base_unet: UNet2DModel, adapter_dir: str | Path, identifier: bool) -> UNet2DModel:
    """`base_unet` (with an identifier when the adapter was trained with one) plus the saved LoRA weights."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    unet = with_identifier(base_unet) if identifier else base_unet
    config = LoraConfig(**json.loads((adapter_dir / ADAPTER_CONFIG).read_text()))
    unet = inject_adapter_in_model(config, unet)
    state = load_file(str(adapter_dir / ADAPTER_FILE))
    embedding = {k.removeprefix("identifier."): v for k, v in state.items() if k.startswith("identifier.")}
    lora = {k: v for k, v in state.items() if not k.startswith("identifier.")}
    result = set_peft_model_state_dict(unet, lora)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{adapter_dir}: adapter weights that fit no layer: {result.unexpected_keys[:5]}")
    if identifier:
        unet.class_embedding.load_state_dict(embedding)
    return unet.eval()

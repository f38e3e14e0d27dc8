"""What every pipeline of this project does the same way: turning samples into outputs, and
making its class name resolvable by `diffusers.DiffusionPipeline.from_pretrained`."""
from __future__ import annotations

import torch
from diffusers import ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor

OUTPUT_TYPES = ("pil", "np", "pt")
_PROCESSOR = VaeImageProcessor(do_resize=False, do_normalize=True)


def check_output_type(output_type: str, extra: tuple[str, ...] = ()) -> None:
    allowed = OUTPUT_TYPES + extra
    if output_type not in allowed:
        raise ValueError(f"output_type must be one of {', '.join(map(repr, allowed))}, got {output_type!r}")


def to_output(images: torch.Tensor, output_type: str, return_dict: bool):
    """Images in [-1, 1], (B, 3, H, W) -> "pil" (list), "np" (B, H, W, 3) or "pt" (B, 3, H, W),
    both in [0, 1]; wrapped the diffusers way."""
    images = _PROCESSOR.postprocess(images.float(), output_type=output_type)
    return ImagePipelineOutput(images=images) if return_dict else (images,)


def register_with_diffusers(*classes: type) -> None:
    """A saved model_index.json names its pipeline class and diffusers looks that name up in its
    own namespace, so a project pipeline must be made visible there (importing `pipelines` does)."""
    import diffusers

    for cls in classes:
        if getattr(diffusers, cls.__name__, None) is not cls:
            setattr(diffusers, cls.__name__, cls)

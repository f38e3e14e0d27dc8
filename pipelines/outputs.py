"""What every pipeline of this project does the same way: turning samples into outputs, and
loading a folder saved with its code (pipelines/portable.py) as the project's own class."""

from __future__ import annotations

import sys

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


class LoadsAsItself:
    """Mixin for project pipelines saved with `pipelines.portable.save_portable`: such a folder names
    its bundled code as `_class_name: [module_file, ClassName]`, which diffusers would import from
    the folder (and refuse without `trust_remote_code`). Loading it through the class it names
    gives that class itself, with no code run from the folder; a bundled component of a project
    class (`[module_file, ClassName]`) is likewise the project's own class."""

    @classmethod
    def load_config(cls, *args, **kwargs):
        # Inside the project the package is loaded; in a folder's bundled copy of this code it is not
        # (and the bundled components are what diffusers should load).
        project = sys.modules.get("pipelines")
        result = super().load_config(*args, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        name = config.get("_class_name")
        if isinstance(name, (list, tuple)) and len(name) == 2 and name[1] == cls.__name__:
            config["_class_name"] = cls.__name__
        for key, value in config.items():
            if (
                not key.startswith("_")
                and isinstance(value, list)
                and len(value) == 2
                and isinstance(value[1], str)
                and project is not None
                and hasattr(project, value[1])
            ):
                # the defining module: diffusers finds ModelMixin & co. there to pick the load method
                config[key] = [getattr(project, value[1]).__module__, value[1]]
        return result

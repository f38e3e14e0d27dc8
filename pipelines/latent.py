"""Unconditional latent diffusion: a `UNet2DModel` denoising VAE latents, decoded by the VAE.

`LatentDiffusionPipeline(unet, vae, scheduler)` samples z_T ~ N(0, I) of the UNet's latent shape,
denoises it with the scheduler, divides by the VAE's `scaling_factor` (the number the latents were
multiplied by for training) and decodes. The VAE is a diffusers `AutoencoderKL` or `VQModel`.

The scheduler is swappable: `pipe.scheduler = make_scheduler("dpm", pipe.scheduler.config)`.
Every component is a diffusers class, so train_ldm saves the folder with this module's code
(`pipelines.portable.save_portable`): `LatentDiffusionPipeline.from_pretrained(dir)` loads it here,
`DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)` anywhere diffusers is installed.

Inference only, importable alone: nothing here imports `tasks` or `flows`.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from pipelines.outputs import LoadsAsItself, check_output_type, to_output


class LatentDiffusionPipeline(LoadsAsItself, DiffusionPipeline):
    """Sample face images from an unconditional latent diffusion model."""

    model_cpu_offload_seq = "unet->vae"

    def __init__(self, unet: UNet2DModel, vae, scheduler):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.unet.config.in_channels), int(h), int(w)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (as the UNet sees them) -> images in [-1, 1], (B, 3, H, W)."""
        z = latents / self.vae.config.scaling_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample `batch_size` images. `latents`: start from this noise instead of drawing it.
        output_type: "pil" (list of images), "np" (B, H, W, 3) in [0, 1], "pt" (B, 3, H, W) in [0, 1],
        or "latent" (the denoised scaled latents)."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        check_output_type(output_type, extra=("latent",))
        shape = (int(batch_size), *self.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(self._execution_device, self.unet.dtype)
        self.scheduler.set_timesteps(int(num_inference_steps), device=self._execution_device)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(latents, t)
            noise_pred = self.unet(model_input, t).sample
            latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
        self.maybe_free_model_hooks()
        if output_type == "latent":
            return ImagePipelineOutput(images=latents) if return_dict else (latents,)
        return to_output(self.decode_latents(latents), output_type, return_dict)

"""Attribute-conditional cartoon diffusion: conditioning modules and the sampling pipeline.

Two conditioning modes, chosen when the model is built (params: `train_cartoon.model.conditioning`):

- `cross_attention`: `AttributeTau` maps the one-hot attribute vector to a short sequence of
  tokens that a `UNet2DConditionModel` attends to (the seed experiments' "Tau" module);
- `class_embedding`: `AttributeProjection` maps the vector with one linear layer to the width of
  the time embedding; a `UNet2DModel(class_embed_type="identity")` adds it to that embedding.

The null condition for classifier-free guidance is the all-zero vector (no attribute chosen):
training replaces a fraction of conditions by it, sampling extrapolates away from it.

Inference only, importable alone: nothing here imports `tasks` or `flows`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from pipelines.outputs import check_output_type, to_output


def one_hot(indices, counts) -> np.ndarray:
    """(..., n) variant indices of n attributes with `counts` variants -> (..., sum(counts)) float32
    rows with a 1 in each attribute's block (the layout Cartoon Set's 217-wide vector uses)."""
    indices = np.asarray(indices)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    out = np.zeros(indices.shape[:-1] + (int(np.sum(counts)),), dtype=np.float32)
    np.put_along_axis(out, indices + offsets, 1.0, axis=-1)
    return out


class _AttributeLayout:
    """Attribute names and variant counts, stored in the module's config (so a saved model carries
    the one-hot layout it was trained on)."""

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(self.config.attribute_names)

    @property
    def attribute_counts(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.config.attribute_counts)

    @property
    def width(self) -> int:
        return int(sum(self.attribute_counts))

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(o) for o in np.concatenate([[0], np.cumsum(self.attribute_counts)[:-1]]))

    def _check_layout(self, names, counts) -> None:
        if len(names) != len(counts) or not names:
            raise ValueError(
                f"attribute_names ({len(names)}) and attribute_counts ({len(counts)}) must be "
                "non-empty and of equal length"
            )
        if any(int(c) < 1 for c in counts):
            raise ValueError(f"every attribute needs at least one variant, got counts {list(counts)}")

    def _check_width(self, onehot: torch.Tensor) -> None:
        if onehot.ndim != 2 or onehot.shape[1] != self.width:
            raise ValueError(f"expected one-hot attributes of shape (batch, {self.width}), got {tuple(onehot.shape)}")


class AttributeTau(ModelMixin, ConfigMixin, _AttributeLayout):
    """One-hot attribute vector (B, width) -> cross-attention tokens (B, num_tokens, cross_attention_dim).

    An MLP of `depth` linear layers (SiLU between) whose last layer emits all tokens at once, plus a
    learned position per token and a LayerNorm (keeps the tokens on the scale attention expects).
    """

    conditioning = "cross_attention"  # how `denoise` feeds it to the UNet

    @register_to_config
    def __init__(
        self,
        attribute_names: Sequence[str] = (),
        attribute_counts: Sequence[int] = (),
        num_tokens: int = 4,
        cross_attention_dim: int = 64,
        depth: int = 2,
        hidden_dim: int = 256,
    ):
        super().__init__()
        self._check_layout(attribute_names, attribute_counts)
        if num_tokens < 1 or depth < 1:
            raise ValueError(f"num_tokens and depth must be >= 1, got {num_tokens} and {depth}")
        dims = [int(sum(attribute_counts))] + [hidden_dim] * (depth - 1) + [num_tokens * cross_attention_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < depth - 1:
                layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers)
        self.position = nn.Parameter(torch.zeros(num_tokens, cross_attention_dim))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        self._check_width(onehot)
        tokens = self.mlp(onehot.to(self.dtype)).view(-1, self.config.num_tokens, self.config.cross_attention_dim)
        return self.norm(tokens + self.position)


class AttributeProjection(ModelMixin, ConfigMixin, _AttributeLayout):
    """One-hot attribute vector (B, width) -> (B, embedding_dim) by one linear layer: the class
    embedding a `UNet2DModel(class_embed_type="identity")` adds to its time embedding."""

    conditioning = "class_embedding"  # how `denoise` feeds it to the UNet

    @register_to_config
    def __init__(
        self, attribute_names: Sequence[str] = (), attribute_counts: Sequence[int] = (), embedding_dim: int = 128
    ):
        super().__init__()
        self._check_layout(attribute_names, attribute_counts)
        self.proj = nn.Linear(int(sum(attribute_counts)), embedding_dim)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        self._check_width(onehot)
        return self.proj(onehot.to(self.dtype))


def denoise(unet: nn.Module, tau: nn.Module, sample: torch.Tensor, timestep, onehot: torch.Tensor) -> torch.Tensor:
    """The model's prediction (noise or v) for `sample` at `timestep` under attributes `onehot`.

    The one place the two conditioning modes differ; training and sampling both call it.
    """
    # By name, not class: a portable folder's pipeline code and its tau component's are two copies.
    mode = getattr(tau, "conditioning", None)
    if mode == "cross_attention":
        return unet(sample, timestep, encoder_hidden_states=tau(onehot)).sample
    if mode == "class_embedding":
        return unet(sample, timestep, class_labels=tau(onehot)).sample
    raise TypeError(f"unknown conditioning module {type(tau).__name__}")


class CartoonDenoiser(nn.Module):
    """UNet + conditioning module as one trainable module (one optimizer, one EMA); the pipeline
    holds the two parts separately, so only they are saved."""

    def __init__(self, unet: nn.Module, tau: nn.Module):
        super().__init__()
        self.unet, self.tau = unet, tau

    def forward(self, sample, timestep, onehot):
        return denoise(self.unet, self.tau, sample, timestep, onehot)


class CartoonDiffusionPipeline(DiffusionPipeline):
    """Sample cartoons for given attributes, with classifier-free guidance.

    Attributes may be given as
      - one-hot vectors: float (B, width) or (width,), tensor, array or nested lists;
      - indices: integers (B, 18) or (18,), one variant index per attribute in schema order;
      - dicts: `{name: index}`, or a list of them. Attributes a dict leaves out are drawn uniformly
        from their variants with the call's `generator` (before the noise), so
        `pipe([{"hair_color": 3}], generator=g)` means "hair colour 3, everything else at random"
        and is reproducible for a seed. Uniform is Cartoon Set's own distribution (every variant
        of an attribute is equally common) and what a caller who names no value expects: any of
        them. A dict naming every attribute draws nothing, so the noise is the same as for the
        equivalent index list.

    `guidance_scale` w combines the conditional and null predictions as
    `null + w * (cond - null)`: 0 samples unconditionally, 1 is the conditional model alone (the
    null pass is skipped), > 1 sharpens the conditioning.

    The scheduler is swappable: `pipe.scheduler = make_scheduler("dpm", pipe.scheduler.config)`.
    """

    model_cpu_offload_seq = "tau->unet"

    def __init__(self, unet: UNet2DConditionModel | UNet2DModel, tau: AttributeTau | AttributeProjection, scheduler):
        super().__init__()
        self.register_modules(unet=unet, tau=tau, scheduler=scheduler)

    # ------------------------------------------------------------------ inputs
    @property
    def attribute_names(self) -> tuple[str, ...]:
        return self.tau.attribute_names

    def null_condition(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, self.tau.width, device=self._execution_device, dtype=torch.float32)

    def encode_attributes(
        self, attributes, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Any accepted attribute form -> float32 one-hot (B, width) on the pipeline's device.
        `generator` draws the attributes a dict leaves out (a list: one generator per dict)."""
        tau = self.tau
        names, counts, width = tau.attribute_names, tau.attribute_counts, tau.width
        if isinstance(attributes, Mapping):
            attributes = [attributes]
        if isinstance(attributes, (list, tuple)) and attributes and isinstance(attributes[0], Mapping):
            if isinstance(generator, list) and len(generator) != len(attributes):
                raise ValueError(f"{len(generator)} generators for {len(attributes)} attribute dicts")
            attributes = [
                self._dict_to_indices(d, generator[i] if isinstance(generator, list) else generator)
                for i, d in enumerate(attributes)
            ]
        if isinstance(attributes, torch.Tensor):
            array = attributes.detach().cpu().numpy()
        else:
            try:
                array = np.asarray(attributes)
            except ValueError as exc:  # ragged nested lists
                raise ValueError(f"attributes must be rectangular: {exc}") from None
        if array.dtype == object or array.size == 0:
            raise ValueError("attributes must be a non-empty array of numbers, a dict or a list of dicts")
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2:
            raise ValueError(f"attributes must be 1-D or 2-D, got shape {array.shape}")
        if array.shape[1] == width and width != len(names):
            onehot = array.astype(np.float32)
        elif array.shape[1] == len(names):
            if not np.issubdtype(array.dtype, np.integer):
                if not np.all(np.equal(np.mod(array, 1), 0)):
                    raise ValueError(f"attribute indices must be integers, got dtype {array.dtype}")
                array = array.astype(np.int64)
            for j, (name, count) in enumerate(zip(names, counts)):
                bad = (array[:, j] < 0) | (array[:, j] >= count)
                if bad.any():
                    raise ValueError(f"attribute {name!r} index {int(array[bad, j][0])} out of range 0..{count - 1}")
            onehot = one_hot(array, counts)
        else:
            raise ValueError(
                f"wrong attribute vector width {array.shape[1]}: expected a {width}-wide one-hot "
                f"vector or {len(names)} indices"
            )
        return torch.from_numpy(onehot).to(self._execution_device)

    def _dict_to_indices(self, d: Mapping[str, int], generator: torch.Generator | None) -> list[int]:
        """Indices in schema order; an attribute `d` leaves out is drawn uniformly with `generator`."""
        names, counts = self.tau.attribute_names, self.tau.attribute_counts
        unknown = [k for k in d if k not in names]
        if unknown:
            raise ValueError(f"unknown attribute name {unknown[0]!r}; known: {', '.join(names)}")
        device = generator.device if generator is not None else "cpu"
        return [
            int(d[n]) if n in d else int(torch.randint(c, (1,), generator=generator, device=device))
            for n, c in zip(names, counts)
        ]

    # ------------------------------------------------------------------ sampling
    def predict(self, sample: torch.Tensor, t, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """The guided model output for one step."""
        if guidance_scale == 1.0:
            return denoise(self.unet, self.tau, sample, t, cond)
        null = torch.zeros_like(cond)
        if guidance_scale == 0.0:
            return denoise(self.unet, self.tau, sample, t, null)
        both = denoise(self.unet, self.tau, torch.cat([sample, sample]), t, torch.cat([null, cond]))
        out_null, out_cond = both.chunk(2)
        return out_null + guidance_scale * (out_cond - out_null)

    @torch.no_grad()
    def __call__(
        self,
        attributes,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample one image per attribute set. output_type: "pil" (list of images), "np" (B, H, W, 3)
        in [0, 1], or "pt" (B, 3, H, W) in [0, 1]."""
        guidance_scale = float(guidance_scale)
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        check_output_type(output_type)
        cond = self.encode_attributes(attributes, generator).to(self.unet.dtype)
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (cond.shape[0], self.unet.config.in_channels, *size)
        sample = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(int(num_inference_steps), device=self._execution_device)
        sample = sample * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, t)
            out = self.predict(model_input, t, cond, guidance_scale)
            sample = self.scheduler.step(out, t, sample, generator=generator).prev_sample
        self.maybe_free_model_hooks()
        return to_output(sample, output_type, return_dict)

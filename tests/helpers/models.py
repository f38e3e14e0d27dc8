"""Tiny models for tests: one UNet factory (every tiny UNet of the suite is built by `tiny_unet`),
the tiny autoencoder and the tiny pipelines several test files share.

Nothing here seeds torch unless asked (`seed=`): callers that seeded before building keep doing so,
so each test draws exactly the weights it drew before these helpers existed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

PLAIN_BLOCKS = (("DownBlock2D", "DownBlock2D"), ("UpBlock2D", "UpBlock2D"))
ATTENTION_BLOCKS = (("DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D"))
CROSS_ATTENTION_BLOCKS = (("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"))

# train_ldm's `model` section for a tiny UNet (the stage builds it from params, not through tiny_unet).
TINY_LDM_MODEL = {
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def tiny_unet(
    *,
    channels: int = 3,
    sample_size: int = 8,
    widths: tuple[int, int] = (8, 16),
    groups: int = 4,
    attention: bool = False,
    cross_attention_dim: int | None = None,
    seed: int | None = None,
    **extra,
) -> UNet2DModel | UNet2DConditionModel:
    """A 2-level UNet, one layer per block.

    - `channels`: in and out channels (3 for pixels, 4 for latents); `widths`: block_out_channels;
      `groups`: norm_num_groups;
    - `attention`: the second level attends (AttnDownBlock2D / AttnUpBlock2D, attention_head_dim 8);
    - `cross_attention_dim`: a UNet2DConditionModel whose first level cross-attends
      (attention_head_dim 4), as the cartoon model's cross_attention mode builds;
    - `extra`: passed on as they are (e.g. class_embed_type="identity");
    - `seed`: torch.manual_seed(seed) first, when given.
    """
    if seed is not None:
        torch.manual_seed(seed)
    common = dict(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        layers_per_block=1,
        norm_num_groups=groups,
    )
    if cross_attention_dim is not None:
        down, up = CROSS_ATTENTION_BLOCKS
        return UNet2DConditionModel(
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=cross_attention_dim,
            **{"attention_head_dim": 4, **extra},
            **common,
        )
    if attention:
        down, up = ATTENTION_BLOCKS
        extra = {"attention_head_dim": 8, **extra}
    else:
        down, up = PLAIN_BLOCKS
    return UNet2DModel(down_block_types=down, up_block_types=up, **common, **extra)


def tiny_latent_unet(seed: int = 0) -> UNet2DModel:
    """The latent UNet of the saved tiny LDM / DreamBooth folders: 4x8x8 latents, attention."""
    return tiny_unet(channels=4, groups=8, attention=True, seed=seed)


def tiny_patch_vae(seed: int = 0):
    """The project's PatchAutoencoderKL at its smallest: 16 px images, 4x8x8 latents."""
    from pipelines import PatchAutoencoderKL

    torch.manual_seed(seed)
    return PatchAutoencoderKL(
        patch_size=2,
        latent_channels=4,
        hidden_channels=8,
        encoder_blocks=1,
        decoder_blocks=1,
        sample_size=16,
        scaling_factor=0.5,
    )


# --- cartoon pipelines ----------------------------------------------------------------------------

CARTOON_NAMES, CARTOON_COUNTS = ["hair_color", "face_color", "glasses"], [3, 2, 4]
CARTOON_MODES = ["class_embedding", "cross_attention"]


def tiny_cartoon_pipeline(mode: str, seed: int = 0):
    """A CartoonDiffusionPipeline on 3 attributes (CARTOON_NAMES, CARTOON_COUNTS) in either conditioning mode."""
    from pipelines import AttributeProjection, AttributeTau, CartoonDiffusionPipeline

    torch.manual_seed(seed)
    layout = dict(attribute_names=CARTOON_NAMES, attribute_counts=CARTOON_COUNTS)
    if mode == "cross_attention":
        unet = tiny_unet(cross_attention_dim=8)
        tau = AttributeTau(**layout, num_tokens=2, cross_attention_dim=8, depth=2, hidden_dim=16)
    else:
        unet = tiny_unet(class_embed_type="identity")
        tau = AttributeProjection(**layout, embedding_dim=unet.time_embedding.linear_2.out_features)
    pipe = CartoonDiffusionPipeline(unet=unet, tau=tau, scheduler=DDPMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_cartoon(out: Path, attributes) -> None:
    """A class-embedding cartoon model on `attributes` ((name, count) pairs), saved as train_cartoon
    saves it (save_pretrained)."""
    from pipelines import AttributeProjection, CartoonDiffusionPipeline

    torch.manual_seed(0)
    names, counts = zip(*attributes)
    unet = tiny_unet(class_embed_type="identity")
    tau = AttributeProjection(list(names), list(counts), embedding_dim=unet.time_embedding.linear_2.out_features)
    CartoonDiffusionPipeline(unet=unet, tau=tau, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(out)


# --- latent pipelines -----------------------------------------------------------------------------


def tiny_latent_pipeline(tmp_path: Path):
    """A LatentDiffusionPipeline: the tiny f=2 VAE of tests.helpers.latents (saved under tmp_path/vae)
    and a 16/32-wide attention UNet on 4x8x8 latents; 100 DDPM steps."""
    from pipelines import LatentDiffusionPipeline
    from tasks.latent.vae import load_vae
    from tests.helpers.latents import save_tiny_vae

    vae = load_vae(save_tiny_vae(tmp_path / "vae", seed=0))
    unet = tiny_unet(channels=4, widths=(16, 32), groups=8, attention=True, seed=0)
    pipe = LatentDiffusionPipeline(unet=unet, vae=vae, scheduler=DDPMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    return pipe

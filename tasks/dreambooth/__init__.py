"""DreamBooth on the face latent diffusion model: subject latents, class samples from the base model
(prior preservation data), and the fine-tuning (full or LoRA, with an optional subject identifier).
See docs/dreambooth.md."""

"""The latent track: the VAE (pretrained or trained here), latent shard encoding, the latent loader,
and train_ldm.

Modules: `config` (the stages' typed configs), `vae` (sources, training, identity, PSNR), `encode`
(resumable shard encoding), `loader` (training batches of z = mean + std * eps), `images` (aligned
PNG shards -> arrays), `train` (train_ldm on the shared engine), `stages` (the Prefect tasks).
Imported lazily: `from tasks.latent.encode import encode_latents`.
"""

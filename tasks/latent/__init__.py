"""The latent track: the VAE (pretrained or trained here), latent shard encoding, the latent loader.

Modules: `vae` (sources, training, identity, PSNR), `encode` (resumable shard encoding), `loader`
(training batches of z = mean + std * eps), `images` (aligned PNG shards -> arrays), `stages`
(Prefect tasks). Imported lazily: `from tasks.latent.encode import encode_latents`.
"""

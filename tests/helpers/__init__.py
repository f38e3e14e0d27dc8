"""Plain helpers shared by the test groups (no tests, no fixtures: fixtures live in conftest.py files).

- configs.py: params.yaml sections with overrides, read into a stage's typed config
- e2e.py: a throwaway copy of the repo where `dvc repro` runs for real
- models.py: tiny_unet (every tiny UNet of the suite), tiny VAEs and pipelines
- latents.py: tiny aligned-face shards, a tiny VAE, latent encoding
- cartoon.py: Cartoon Set-format folders, colour-coded cartoon shard images
- faces.py: photos packages ship, face folders, the models evaluate_faces samples
- dreambooth.py: DreamBooth's tiny base, latents, params and training run
- worker_project.py: a tiny DVC project with a bare git origin, for the worker
- scorecard_metrics.py: metrics files for the scorecard
"""

"""The shared diffusion training engine: `config` (TrainConfig, the params every training shares),
`engine` (the accelerate loop: AdamW + cosine warmup, EMA, exact resume, dvclive), `memory`.

Import the module you need (`from tasks.training.engine import train`): a data stage that reads a
TrainConfig then neither imports accelerate nor runs, or depends on, the engine's code.
"""

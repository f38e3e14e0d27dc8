"""Running work in several processes: the spawn-safe process pool (`pool`) and `accelerate launch` (`launch`)."""

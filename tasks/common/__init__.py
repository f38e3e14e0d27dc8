"""Shared plumbing: typed stage configs, params.yaml, shards and their loader, downloads, the process
pool, file hashes and seeds, accelerate launch, sample grids, logging, timings."""

"""Shared plumbing: shards, loaders, downloads, process pools, accelerate launch, params, logging."""

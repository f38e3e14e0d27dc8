"""WebDataset shards: dataset folders, their writers and manifests (`dataset`), and the one loader (`loader`)."""

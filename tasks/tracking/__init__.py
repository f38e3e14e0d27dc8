"""What a stage depends on: identities of code, params and data (`identity`), dvc.yaml's code deps
(`deps`), file hashes and seeds (`hashing`)."""

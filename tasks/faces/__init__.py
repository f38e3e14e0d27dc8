"""Face track: FFHQ ingestion, FFHQ-style alignment, DreamBooth subject preparation.

Modules: `config` (the stages' typed configs), `fetch` (fetch_faces), `aligning` (align_faces),
`subject` (prepare_subject), and the per-photo work the process pools run, free of prefect and
torch so spawned workers start fast: `work`, `align`, `landmarks`, `images`.
"""

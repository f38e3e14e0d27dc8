"""Cartoon track: Cartoon Set download or rendering, preprocessing, the attribute-conditional model,
its judge and its evaluation.

Modules: `config` (the stages' typed configs), `stages` (the Prefect tasks), and the work: `fetch` +
`render`, `preprocess` + `images` + `schema`, `loader`, `train`, `classifier`, `evaluate`.
"""

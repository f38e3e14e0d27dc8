"""Cartoon track: Cartoon Set download or rendering, preprocessing, the attribute-conditional model,
its judge and its evaluation."""

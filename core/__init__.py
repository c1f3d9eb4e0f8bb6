"""The types both halves share: observations, alerts and cases (`model`), config building blocks
(`schema`) and coordinate systems (`coords`). `detectors/` (pure analysis) and `gateway/` (the
runtime) both import from here; `core` imports from neither."""

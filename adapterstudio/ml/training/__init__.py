"""The fine-tuning engine: the Accelerate child process (`worker`), models and strategies, encoding, batching,
evaluation and the frozen-feature probe. The spec, data preparation and recipe it runs live in
`adapterstudio.core.training`. Heavy imports stay in submodules."""

"""The fine-tuning engine (spec, data, the Accelerate child process). Heavy imports stay in submodules."""

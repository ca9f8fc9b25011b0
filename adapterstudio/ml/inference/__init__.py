"""Inference on one base model with hot-swapped PEFT adapters (torch-backed).

Importing this package imports torch; the services layer imports it lazily.

>>> from adapterstudio.ml.inference import InferenceSession          # doctest: +SKIP
>>> s = InferenceSession("/models/tiny-llama", task="CAUSAL_LM")
>>> s.add_adapter("poet", "/lib/adapters/poet")
>>> s.use("poet"); s.generate("Roses are", max_new_tokens=20)
"""

from adapterstudio.ml.inference.session import (
    AdapterEntry,
    GenerationParams,
    InferenceSession,
    resolve_device,
    resolve_dtype,
)

__all__ = ["AdapterEntry", "GenerationParams", "InferenceSession", "resolve_device", "resolve_dtype"]

"""Inference on one base model with hot-swapped PEFT adapters (torch-backed).

Importing this package imports torch; the services layer imports it lazily.

>>> from adapterstudio.ml.inference import InferenceSession          # doctest: +SKIP
>>> s = InferenceSession("/models/tiny-llama", task="CAUSAL_LM")
>>> s.add_adapter("poet", "/lib/adapters/poet")
>>> s.use("poet"); s.generate("Roses are", max_new_tokens=20)

The modules: ``session`` (the entry point), ``devices`` (device and precision policy),
``base`` (loading the base), ``adapters`` (describing adapters; which go to slots),
``residency`` (the adapters loaded on the device), ``slots`` (device slots and the host
tier), ``layers`` (pointing PEFT's layers at adapters), ``generation`` (prompts,
streaming, stop strings), ``export`` and ``weights`` (reading safetensors).
"""

from adapterstudio.ml.inference.adapters import AdapterEntry
from adapterstudio.ml.inference.devices import resolve_device, resolve_dtype
from adapterstudio.ml.inference.generation import GenerationParams
from adapterstudio.ml.inference.session import InferenceSession

__all__ = ["AdapterEntry", "GenerationParams", "InferenceSession", "resolve_device", "resolve_dtype"]

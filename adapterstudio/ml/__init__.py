"""Torch-backed work: training, inference, merging, export.

Heavy libraries (torch, transformers, peft, accelerate) are imported inside functions
or in submodules that only load when used, so importing this package is cheap.
"""

"""Pure-Python domain layer: records, settings, the catalogue store, jobs.

Nothing here imports Qt or torch, so the CLI, tests and the GUI can open the
catalogue instantly.
"""

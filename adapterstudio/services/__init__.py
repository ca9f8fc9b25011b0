"""Use cases over the core: the catalogue, training, inference and sharing.

No Qt here: the CLI, the Python API and the GUI all call these functions.
"""

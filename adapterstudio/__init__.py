"""AdapterStudio: a desktop studio for transfer learning with PEFT adapters.

The package is layered (see ARCHITECTURE in the README): :mod:`adapterstudio.core`
holds pure-Python records and the catalogue store, :mod:`adapterstudio.ml` the
torch-backed work, :mod:`adapterstudio.services` the use cases, :mod:`adapterstudio.api`
the public plugin API, and :mod:`adapterstudio.ui` the Qt application.
"""

__version__ = "0.1.0"

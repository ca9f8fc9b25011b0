"""The OpenAI-compatible HTTP server (``adapterstudio serve``): a front end beside ``cli`` and ``ui``.

It reaches the model only through :mod:`adapterstudio.services.inference` (never
``adapterstudio.ml``). The modules: ``app`` (the Starlette application: routes, API
key, streaming, disconnects and timeouts), ``validation`` (request bodies checked field by
field), ``scheduler`` (generations run one at a time on a worker thread, cancellable),
``errors`` (OpenAI's error object and status codes).
"""

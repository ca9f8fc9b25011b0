"""Errors that reach the user.

Every failure a user can cause (bad file, unknown name, wrong base...) is raised as a
:class:`UserError` whose message is one readable sentence naming the thing at fault.
The CLI prints it and exits non-zero; the GUI shows it in a dialog. Anything else is a
bug and is reported with a traceback by the exception hook.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(error)`` is one clear sentence."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotFound(UserError):
    """A named catalogue entry, run or file does not exist."""


class AlreadyExists(UserError):
    """A name is already taken in the catalogue."""


class InvalidInput(UserError):
    """A file or value is malformed (corrupt safetensors, invalid config, ...)."""


class PickleRefused(InvalidInput):
    """Weights are only available as pickle and the user did not allow it."""


class Incompatible(UserError):
    """An adapter does not fit a base model."""


class Cancelled(Exception):
    """Raised inside long work when the user asked to stop."""

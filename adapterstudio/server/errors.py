"""OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}`` with its HTTP status.

Every failure the server reports goes through :class:`APIError`, so a client (the official
``openai`` package included) always gets JSON it can parse, with a status it acts on.
"""

from __future__ import annotations

from typing import Any

from adapterstudio.core.errors import Incompatible, NotFound, UserError

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error answered as OpenAI's error object with *status*."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """A 400 about the request's content (*param*: the field at fault, dotted)."""
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, why: str = "") -> APIError:
    """A 400 for a field this server understands but cannot honour."""
    return APIError(400, f"{param} is not supported by this server{': ' + why if why else ''}.", param=param,
                    code="unsupported_parameter")


def model_not_found(model: str, why: str) -> APIError:
    return APIError(404, f"The model {model!r} does not exist: {why}", param="model", code="model_not_found")


def from_user_error(exc: UserError, param: str | None = None) -> APIError:
    """A service's :class:`UserError` as a client error (its sentence is the message)."""
    if isinstance(exc, NotFound):
        return APIError(404, str(exc), param=param, code="model_not_found" if param == "model" else None)
    if isinstance(exc, Incompatible):
        return APIError(400, str(exc), param=param, code="model_incompatible")
    return APIError(400, str(exc), param=param, code=None)


def internal(message: str = "The server failed while generating; its log has the details.") -> APIError:
    return APIError(500, message, type=SERVER_ERROR, code="internal_error")

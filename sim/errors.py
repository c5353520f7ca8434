"""OpenAI-style error bodies and responses, shared by the chat, Files and Batch routes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

_ERROR_TYPES = {
    400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
    409: "invalid_request_error", 429: "requests",
}  # fmt: skip


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """Return an OpenAI-style error body."""
    kind = _ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None, **kw: Any
) -> web.Response:
    """Build an OpenAI-style error response."""
    return web.json_response(error_body(status, message, code, param), status=status, **kw)

"""Errors of the render gate's ComfyUI layer. All are one-line :class:`QuantgateError`s (exit 2)
except :class:`ExecutionError`, which the gate turns into a finding against the candidate."""
from __future__ import annotations

from quant.errors import QuantgateError


class ComfyError(QuantgateError):
    """Anything that went wrong talking to / running ComfyUI (exit 2)."""


class ServerUnreachable(ComfyError):
    """Nothing answers at the URL (connection refused, DNS, timeout on connect)."""


class ServerDied(ComfyError):
    """The server we started exited, or a server stopped answering mid-render."""


class ServerStartError(ComfyError):
    """The server did not become healthy; the message carries the log's last error line."""


class RenderTimeout(ComfyError):
    """A prompt did not finish within its time limit (the server was asked to /interrupt it)."""


class PromptRejected(ComfyError):
    """``POST /prompt`` answered 400: the workflow failed ComfyUI's validation."""

    def __init__(self, problem: str, details: dict | None = None):
        super().__init__(problem)
        self.details = details or {}


class ExecutionError(ComfyError):
    """ComfyUI ran the prompt and a node raised (``execution_error``)."""

    def __init__(self, node_id: str, node_type: str, exception_type: str, message: str, prompt_id: str = ""):
        self.node_id, self.node_type = str(node_id), str(node_type)
        self.exception_type, self.message = str(exception_type), str(message).strip()
        self.prompt_id = prompt_id
        first = self.message.splitlines()[0] if self.message else ""
        super().__init__(f"ComfyUI node {self.node_id} ({self.node_type}) raised {self.exception_type}: {first[:300]}")

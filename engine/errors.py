"""Engine errors. Adapters map each class to one Dify error class (models/common.py holds the table)."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class SettingError(EngineError):
    """A runtime-profile value is invalid. Names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: {value!r} is not valid; allowed: {allowed}")


class ModelLoadError(EngineError):
    """The model files could not be loaded. `field` is the setting the user should look at."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class BadRequestError(EngineError):
    """The request itself is invalid (empty input, unsupported content, too long a prompt, …)."""


class ModelBusyError(EngineError):
    """The model's queue is full; the call was refused without being queued."""


class InferenceError(EngineError):
    """ONNX Runtime failed while computing a batch; only the calls in that batch get this error."""


class EngineClosedError(EngineError):
    """The model was unloaded or the engine shut down while the call was waiting."""


class RateLimitedError(EngineError):
    """The user sent more requests than the administrator's per-user rate limit allows."""

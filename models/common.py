"""Shared pieces of the Dify adapters: profile parsing, the engine, model schemas and the one table that maps
engine errors to Dify errors. Adapters stay thin: translate Dify entities to engine calls and back."""

from __future__ import annotations

import logging
from decimal import Decimal

from dify_plugin.entities import I18nObject
from dify_plugin.entities.model import AIModelEntity, FetchFrom, ModelPropertyKey, ModelType
from dify_plugin.entities.model.text_embedding import EmbeddingUsage
from dify_plugin.errors.model import (
    CredentialsValidateFailedError,
    InvokeBadRequestError,
    InvokeError,
    InvokeRateLimitError,
    InvokeServerUnavailableError,
)

from engine import prometheus
from engine.api import FALLBACK_DIMENSION, EncoderTraits, Engine, default_engine, existing_engine, max_chunks_for
from engine.errors import (
    BadRequestError,
    EngineClosedError,
    EngineError,
    InferenceError,
    ModelBusyError,
    ModelLoadError,
    RateLimitedError,
    SettingError,
)
from engine.model_config import DEFAULT_CONTEXT
from engine.model_info import ModelInfo
from engine.settings.profile import RuntimeProfile, parse_profile

log = logging.getLogger(__name__)

INVOKE_ERROR_MAPPING: dict[type[InvokeError], list[type[Exception]]] = {
    InvokeBadRequestError: [BadRequestError, SettingError, ModelLoadError, ValueError],
    InvokeServerUnavailableError: [ModelBusyError, EngineClosedError, InferenceError],
    InvokeRateLimitError: [RateLimitedError],
}


def engine() -> Engine:
    return default_engine()


def profile_for(credentials: dict, model_type: ModelType) -> RuntimeProfile:
    return parse_profile(credentials, model_type.value)


def validate_model(credentials: dict, model_type: ModelType) -> ModelInfo:
    """Parse the settings and load the model for real; any problem becomes CredentialsValidateFailedError
    naming the field."""
    try:
        info = engine().model_info(profile_for(credentials, model_type))
    except EngineError as error:
        raise CredentialsValidateFailedError(str(error)) from None
    except Exception as error:  # unexpected: say what kind without echoing internals
        log.exception("validation of a %s model failed unexpectedly", model_type.value)
        raise CredentialsValidateFailedError(f"model could not be loaded: {type(error).__name__}") from None
    log.info("validated %s", info.describe())
    return info


def usage_for_embedding(tokens: int, latency: float) -> EmbeddingUsage:
    return EmbeddingUsage(
        tokens=tokens,
        total_tokens=tokens,
        unit_price=Decimal(0),
        price_unit=Decimal(0),
        total_price=Decimal(0),
        currency="USD",
        latency=latency,
    )


def encoder_schema(model: str, credentials: dict, model_type: ModelType) -> AIModelEntity:
    """Schema of an embedding or rerank model, from the model's config files (no load needed)."""
    try:
        traits = engine().traits(profile_for(credentials, model_type))
    except EngineError:
        traits = None  # invalid settings are reported by validation, not here
    assert traits is None or isinstance(traits, EncoderTraits)
    defaults = EncoderTraits(DEFAULT_CONTEXT[model_type.value], max_chunks_for(FALLBACK_DIMENSION))
    traits = traits or defaults
    properties: dict[ModelPropertyKey, object] = {ModelPropertyKey.CONTEXT_SIZE: traits.context_size}
    if model_type == ModelType.TEXT_EMBEDDING:
        properties[ModelPropertyKey.MAX_CHUNKS] = traits.max_chunks or defaults.max_chunks
    return AIModelEntity(
        model=model,
        label=I18nObject(en_US=model),
        model_type=model_type,
        fetch_from=FetchFrom.CUSTOMIZABLE_MODEL,
        model_properties=properties,
        parameter_rules=[],
    )


def install_stats_signal() -> None:
    """`kill -USR1 <plugin pid>` writes every loaded model's statistics to the plugin log (through the SDK's
    logging, never raw stdout). Under gevent the handler runs in a greenlet, so it may wait for the workers."""
    import signal

    try:
        import gevent

        gevent.signal_handler(signal.SIGUSR1, lambda: engine().log_stats())
    except (ImportError, ValueError, AttributeError):  # not the main thread / no gevent: no on-demand stats
        log.debug("SIGUSR1 statistics handler not installed")


def dify_error_name(error_class: type[BaseException]) -> str:
    """The Dify error an engine error becomes (the SDK's first match in INVOKE_ERROR_MAPPING, else InvokeError),
    for the metrics' error counts."""
    for invoke_error, engine_errors in INVOKE_ERROR_MAPPING.items():
        if issubclass(error_class, tuple(engine_errors)):
            return invoke_error.__name__
    return InvokeError.__name__


def install_metrics() -> None:
    """Serve metrics for Prometheus on an OS thread when the administrator set ONNX_LOCAL_METRICS_ADDR (off
    otherwise; an invalid address is an error in the plugin log and the plugin serves on without metrics).
    Binding is immediate and the engine is not created for it: the daemon's first heartbeat never waits."""
    prometheus.start_from_environment(existing_engine, dify_error_name)

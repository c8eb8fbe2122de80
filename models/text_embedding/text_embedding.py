import time

from dify_plugin import TextEmbeddingModel
from dify_plugin.entities.model import AIModelEntity, EmbeddingInputType, ModelType
from dify_plugin.entities.model.text_embedding import TextEmbeddingResult
from dify_plugin.errors.model import InvokeError

from models.common import INVOKE_ERROR_MAPPING, encoder_schema, engine, profile_for, usage_for_embedding, validate_model


class OnnxLocalTextEmbeddingModel(TextEmbeddingModel):
    def _invoke(
        self,
        model: str,
        credentials: dict,
        texts: list[str],
        user: str | None = None,
        input_type: EmbeddingInputType = EmbeddingInputType.DOCUMENT,
    ) -> TextEmbeddingResult:
        started = time.perf_counter()
        engine().admit(user)
        profile = profile_for(credentials, ModelType.TEXT_EMBEDDING)
        outcome = engine().embed(profile, texts, EmbeddingInputType(input_type).value)
        usage = usage_for_embedding(outcome.tokens, time.perf_counter() - started)
        return TextEmbeddingResult(model=model, embeddings=outcome.vectors, usage=usage)

    def get_num_tokens(self, model: str, credentials: dict, texts: list[str]) -> list[int]:
        return engine().count_tokens(profile_for(credentials, ModelType.TEXT_EMBEDDING), texts)

    def validate_credentials(self, model: str, credentials: dict) -> None:
        validate_model(credentials, ModelType.TEXT_EMBEDDING)

    def get_customizable_model_schema(self, model: str, credentials: dict) -> AIModelEntity:
        return encoder_schema(model, credentials, ModelType.TEXT_EMBEDDING)

    @property
    def _invoke_error_mapping(self) -> dict[type[InvokeError], list[type[Exception]]]:
        return INVOKE_ERROR_MAPPING

from dify_plugin import RerankModel
from dify_plugin.entities.model import AIModelEntity, ModelType
from dify_plugin.entities.model.rerank import RerankDocument, RerankResult
from dify_plugin.errors.model import InvokeError

from models.common import INVOKE_ERROR_MAPPING, encoder_schema, engine, profile_for, validate_model


class OnnxLocalRerankModel(RerankModel):
    def _invoke(
        self,
        model: str,
        credentials: dict,
        query: str,
        docs: list[str],
        score_threshold: float | None = None,
        top_n: int | None = None,
        user: str | None = None,
    ) -> RerankResult:
        engine().admit(user)
        profile = profile_for(credentials, ModelType.RERANK)
        hits = engine().rerank(profile, query, docs, top_n=top_n, score_threshold=score_threshold)
        return RerankResult(
            model=model, docs=[RerankDocument(index=hit.index, text=hit.text, score=hit.score) for hit in hits]
        )

    def validate_credentials(self, model: str, credentials: dict) -> None:
        validate_model(credentials, ModelType.RERANK)

    def get_customizable_model_schema(self, model: str, credentials: dict) -> AIModelEntity:
        return encoder_schema(model, credentials, ModelType.RERANK)

    @property
    def _invoke_error_mapping(self) -> dict[type[InvokeError], list[type[Exception]]]:
        return INVOKE_ERROR_MAPPING

from dify_plugin import ModelProvider


class OnnxLocalProvider(ModelProvider):
    """Models are configured one by one (customizable models); the provider itself has no credentials."""

    def validate_provider_credentials(self, credentials: dict) -> None:
        pass

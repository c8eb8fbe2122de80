"""Per-model generation settings, parsed from Dify's credential form (strings; blank means default)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.profile import FormValues

MODES = ("chat", "completion")
OVERFLOW_POLICIES = ("error", "truncate_oldest")


@dataclass(frozen=True)
class GenerationSettings:
    mode: str = "chat"  # chat: render the chat template; completion: plain text for base models
    max_generation_seconds: float = 300.0  # 0: unlimited; the daemon cannot cancel, so bound runaway generations
    prompt_overflow: str = "error"  # error | truncate_oldest (drop the oldest turns until the prompt fits)
    max_concurrent_sequences: int = 4  # sequences decoding at once; later requests wait in the queue


def parse_generation_settings(form: FormValues) -> GenerationSettings:
    """Raises engine.errors.SettingError naming the field for an invalid value."""
    return GenerationSettings(
        mode=form.choice("mode", MODES, "chat"),
        max_generation_seconds=form.number("max_generation_seconds", 300.0, 0.0, 86400.0),
        prompt_overflow=form.choice("prompt_overflow", OVERFLOW_POLICIES, "error"),
        max_concurrent_sequences=form.integer("max_concurrent_sequences", 4, 1, 64) or 4,
    )

"""Which decoder architectures convert.py builds in which layout, and why the rest are refused.

One table, read by convert.py before any heavy work starts, so that a user learns at once (not after a long export)
that an architecture cannot be built, and what to do instead. The verified entries each have a tiny fixture under
tests/fixtures/models/ checked against Hugging Face `generate` (tools/fixtures_lib/arch_decoders.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Support:
    optimum: bool
    genai: bool
    # The genai builder run under transformers 4.57 (through fixtures_lib/genai_builder_shim.py) instead of 5.x:
    # Gemma 3's transformers-5 config nests its RoPE settings per layer type, and the 0.18 builder stops on it
    # with KeyError: 'rope_type'.
    genai_under_tf4: bool = False
    note: str = ""


# Decoders with a fixture in both layouts.
VERIFIED: dict[str, Support] = {
    "Qwen2ForCausalLM": Support(True, True),
    "Qwen3ForCausalLM": Support(True, True),
    "LlamaForCausalLM": Support(True, True, note="Llama 3.x, SmolLM 1/2"),
    "MistralForCausalLM": Support(True, True),
    "Phi3ForCausalLM": Support(True, True, note="Phi-3, Phi-3.5, Phi-4-mini"),
    "Gemma3ForCausalLM": Support(True, True, genai_under_tf4=True, note="Gemma 3 text (270M, 1B)"),
}

# Refused with the reason; the user gets the sentence as the error.
REFUSED: dict[str, str] = {
    "Gemma3ForConditionalGeneration": (
        "Gemma 3 4B and larger are vision-language checkpoints: the plugin serves text decoders only; "
        "use a text-only Gemma 3 checkpoint (270M, 1B: Gemma3ForCausalLM)"
    ),
    "Mistral3ForConditionalGeneration": "Mistral 3 is a vision-language checkpoint: the plugin serves text only",
    "Phi4MMForCausalLM": "Phi-4-multimodal needs speech/vision inputs the plugin does not serve",
}


def builder_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as the onnxruntime-genai 0.18 builder needs it to build what transformers runs.

    - It iterates config.rope_scaling, which transformers 4.57 writes as null for plain RoPE; {"rope_type":
      "default"} is equivalent (a real scaling dict is kept).
    - It applies a sliding window only to layers that `layer_types` marks "sliding_attention"; Mistral's config
      has a window for every layer but no layer_types, so without them the graph would attend to everything.
    """
    config = dict(config)
    config["rope_scaling"] = config.get("rope_scaling") or {"rope_type": "default"}
    window, layers = config.get("sliding_window"), config.get("num_hidden_layers")
    if config.get("model_type") == "mistral" and window and isinstance(layers, int) and "layer_types" not in config:
        config["layer_types"] = ["sliding_attention"] * layers
    return config


def architecture_of(hf_dir: Path) -> str:
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    names = config.get("architectures") or []
    return names[0] if names else f"(no architectures in config.json; model_type {config.get('model_type')!r})"


def check_architecture(architecture: str, layout: str, decoder: bool) -> Support | None:
    """A decoder's support entry (None for an encoder), or SystemExit naming the architecture, the reason and
    what is supported."""
    if architecture in REFUSED:
        raise SystemExit(f"{architecture} cannot be converted: {REFUSED[architecture]}")
    if not decoder:
        return None
    support = VERIFIED.get(architecture)
    if support is None:
        if layout == "genai":
            raise SystemExit(
                f"the onnxruntime-genai builder path is not verified for {architecture} "
                f"(supported: {', '.join(sorted(VERIFIED))}); use --layout optimum, which exports any architecture "
                "Optimum knows"
            )
        return Support(optimum=True, genai=False, note="not verified here: check its output against transformers")
    return support

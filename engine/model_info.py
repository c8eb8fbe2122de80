"""What a loaded model is: its file, layout, size, load time, threads, cores and context, for validation
messages, logs, statistics and the adapters' schemas."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.model_files import ModelFiles
from engine.placement import Placement, spinning_enabled
from engine.settings.profile import RuntimeProfile


@dataclass
class ModelInfo:
    """What was loaded, for validation messages, logs and statistics."""

    name: str
    model_type: str
    onnx_file: str
    layout: str
    size_bytes: int
    load_seconds: float
    threads: int
    cores: tuple[int, ...] | None
    context_size: int
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_load(
        cls,
        name: str,
        profile: RuntimeProfile,
        files: ModelFiles,
        loaded_path: Path,
        placement: Placement,
        context_size: int,
        details: dict[str, Any],
    ) -> ModelInfo:
        """Describe a model a builder loaded from `loaded_path` (the model's file, or its quantized copy)."""
        directory = profile.model_dir
        return cls(
            name=name,
            model_type=profile.model_type,
            onnx_file=str(loaded_path.relative_to(directory))
            if loaded_path.is_relative_to(directory)
            else loaded_path.name,
            layout=files.layout,
            size_bytes=loaded_path.stat().st_size if loaded_path != files.onnx_path else files.size_bytes,
            load_seconds=0.0,
            threads=placement.threads,
            cores=placement.cores,
            context_size=context_size,
            details={**details, "spin": spinning_enabled(profile.session, placement), "adaptive": placement.adaptive},
        )

    def describe(self) -> str:
        cores = "unpinned" if self.cores is None else "cores " + ",".join(map(str, self.cores))
        if self.details.get("adaptive"):
            cores = f"{cores} for now (adaptive: its share follows which models are busy)"
        spin = "spinning" if self.details.get("spin") else "no spinning"
        return (
            f"{self.onnx_file} ({self.layout} layout, {self.size_bytes / 1e6:.1f} MB) "
            f"loaded in {self.load_seconds:.2f}s (+{self.details.get('rss_delta_mb', 0)} MB RSS), "
            f"{self.threads} thread(s) on {cores}, {spin}, context {self.context_size}"
            + (f", logits for the {self.details['logits']}" if "logits" in self.details else "")
            + (f", {self.details['kv_cache']}" if "kv_cache" in self.details else "")
        )

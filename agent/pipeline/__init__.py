"""The per-file pipeline: read, split, batch, invoke, reorder and write one input."""

from agent.pipeline.file import Pipeline
from agent.pipeline.settings import PipelineSettings

__all__ = ["Pipeline", "PipelineSettings"]

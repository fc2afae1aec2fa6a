"""The per-file pipeline: read, split, batch, invoke, reorder and write one input."""

from agent.pipeline.file import Pipeline, PipelineSettings

__all__ = ["Pipeline", "PipelineSettings"]

"""bt-agent: SageMaker Batch Transform semantics on any host."""

__version__ = "0.1.0"

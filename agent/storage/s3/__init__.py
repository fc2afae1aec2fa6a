"""S3 storage: the store, its multipart uploads, and the retrying call both use."""

from agent.storage.s3.store import S3Store

__all__ = ["S3Store"]

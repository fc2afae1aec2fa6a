"""The local file system as a store: the store (listing, reads, small objects) and its
uploads (temporary files renamed into place)."""

from agent.storage.local.store import LocalStore
from agent.storage.local.upload import TEMP_NAME_PATTERN, LocalUpload, file_etag, is_temp_name

__all__ = ["TEMP_NAME_PATTERN", "LocalStore", "LocalUpload", "file_etag", "is_temp_name"]

"""Byte codecs shared by the splitters and the stores: gzip streams, and CRC32C (compiled,
with a pure-Python twin)."""

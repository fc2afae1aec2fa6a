"""Byte codecs below the stages that use them: gzip streams (inputs with ``CompressionType:
Gzip``, decompressed by the pipeline and by ``bt-agent split``) and CRC-32C (the RecordIO
and TFRecord framing; compiled, with a pure-Python twin)."""

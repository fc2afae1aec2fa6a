# CRC-32C over any buffer, compiled. The byte-level algorithm and the
# run-time choice between the CPU instruction and tables live in bt_crc32c.h;
# agent/_crc32c_py.py is the pure-Python twin with the same functions.
#
#   value(data, crc=0)  -> int   CRC-32C, continuing from a previous value
#   masked(data)        -> int   TFRecord's masked CRC of data
#   implementation()    -> str   "hardware" or "table"

from libc.stdint cimport uint32_t

from bt_crc32c cimport bt_crc32c_cpu_has_hw, bt_crc32c_mask, bt_crc32c_update


def value(const unsigned char[::1] data, uint32_t crc=0):
    """CRC-32C of ``data``, continuing from ``crc`` (the value of the bytes before)."""
    cdef size_t n = data.shape[0]
    if n == 0:
        return crc
    with nogil:
        crc = bt_crc32c_update(crc, &data[0], n)
    return crc


def masked(const unsigned char[::1] data):
    """TFRecord's masked CRC-32C of ``data``."""
    cdef size_t n = data.shape[0]
    cdef uint32_t crc = 0
    if n:
        with nogil:
            crc = bt_crc32c_update(0, &data[0], n)
    return bt_crc32c_mask(crc)


def implementation():
    """Which CRC code path this CPU uses: ``"hardware"`` or ``"table"``."""
    return "hardware" if bt_crc32c_cpu_has_hw() else "table"

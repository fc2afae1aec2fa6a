# Declarations of bt_crc32c.h for every .pyx that needs CRC-32C.
from libc.stdint cimport uint32_t


cdef extern from "bt_crc32c.h" nogil:
    uint32_t bt_crc32c_update(uint32_t crc, const unsigned char *p, size_t n)
    uint32_t bt_crc32c_mask(uint32_t crc)
    uint32_t bt_crc32c_sw(uint32_t crc, const unsigned char *p, size_t n)
    int bt_crc32c_mode
    int bt_crc32c_cpu_has_hw()

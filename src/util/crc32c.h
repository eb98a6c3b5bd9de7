// CRC-32C (Castagnoli), the per-tensor and per-section checksum of the .kmq format.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kmq {

// crc32c(data) with the usual pre/post inversion; `crc` chains calls: crc32c(b, crc32c(a)).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace kmq

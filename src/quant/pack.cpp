// Packing of b-bit indices into a row's bit stream: index j at bit offset j*bits, least
// significant bit first, so a 3-bit index may straddle two bytes (layout in kmq/quant.h).
#include <cassert>
#include <cstring>

#include "kmq/quant.h"

namespace kmq {

void pack_indices(const uint8_t* idx, int64_t n, int bits, uint8_t* out) {
  assert(bits >= 1 && bits <= 4);
  const int64_t n_bytes = (n * bits + 7) / 8;
  const uint8_t mask = uint8_t((1u << bits) - 1);
  if (bits == 1 || bits == 2 || bits == 4) {  // whole indices per byte: no straddling
    const int per = 8 / bits;
    for (int64_t b = 0; b < n_bytes; ++b) {
      unsigned v = 0;
      const int64_t j0 = b * per;
      const int cnt = int(n - j0 < per ? n - j0 : per);
      for (int i = 0; i < cnt; ++i) v |= unsigned(idx[j0 + i] & mask) << (i * bits);
      out[b] = uint8_t(v);  // padding bits of the last byte are zero
    }
    return;
  }
  // General case: a 32-bit accumulator flushed a byte at a time.
  uint32_t acc = 0;
  int have = 0;
  int64_t o = 0;
  for (int64_t j = 0; j < n; ++j) {
    acc |= uint32_t(idx[j] & mask) << have;
    have += bits;
    while (have >= 8) {
      out[o++] = uint8_t(acc);
      acc >>= 8;
      have -= 8;
    }
  }
  if (have > 0) out[o++] = uint8_t(acc);
  assert(o == n_bytes);
}

uint8_t unpack_index(const uint8_t* row, int64_t j, int bits) {
  const int64_t bit = j * bits;
  const int shift = int(bit & 7);
  unsigned v = row[bit >> 3];
  // Read the next byte only when the index straddles into it: it then lies inside the
  // row (row_bytes covers every index bit), so the read never passes the row's end.
  if (shift + bits > 8) v |= unsigned(row[(bit >> 3) + 1]) << 8;
  return uint8_t((v >> shift) & ((1u << bits) - 1));
}

}  // namespace kmq

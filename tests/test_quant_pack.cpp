// Tests of the index bit stream: hand-computed bytes, a bit-level reference on odd
// lengths for bits 1..4 (3-bit indices straddle bytes), no writes past the row.
#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "kmq/quant.h"

using namespace kmq;

namespace {

// Bit p of the stream, LSB first within each byte: the layout written independently.
int stream_bit(const std::vector<uint8_t>& bytes, int64_t p) {
  return (bytes[p >> 3] >> (p & 7)) & 1;
}

}  // namespace

TEST_CASE("pack_indices: hand-computed bytes") {
  auto pack = [](std::vector<uint8_t> idx, int bits) {
    std::vector<uint8_t> out((idx.size() * bits + 7) / 8, 0xee);
    pack_indices(idx.data(), int64_t(idx.size()), bits, out.data());
    return out;
  };
  CHECK(pack({1, 0, 1, 1, 0, 0, 0, 1, 1}, 1) == std::vector<uint8_t>{0x8d, 0x01});
  CHECK(pack({1, 2, 3, 0, 2}, 2) == std::vector<uint8_t>{0x39, 0x02});
  CHECK(pack({1, 2, 3, 4, 5, 6, 7, 0, 5}, 3) == std::vector<uint8_t>{0xd1, 0x58, 0x1f, 0x05});
  CHECK(pack({0xa, 0x5, 0xf}, 4) == std::vector<uint8_t>{0x5a, 0x0f});
  // Index 2 of a 3-bit stream occupies bits 6..8: it straddles bytes 0 and 1.
  const std::vector<uint8_t> row = {0xd1, 0x58, 0x1f, 0x05};
  CHECK(unpack_index(row.data(), 2, 3) == 3);
  CHECK(unpack_index(row.data(), 5, 3) == 6);  // bits 15..17
  CHECK(unpack_index(row.data(), 8, 3) == 5);  // last, in the padded byte
}

TEST_CASE("pack/unpack round trip, bits 1..4, odd lengths") {
  std::mt19937_64 rng(7);
  for (int bits = 1; bits <= 4; ++bits) {
    for (int64_t n : {1, 2, 3, 5, 7, 8, 9, 63, 64, 65, 127, 129, 1000, 1001}) {
      CAPTURE(bits);
      CAPTURE(n);
      std::vector<uint8_t> idx(n);
      for (auto& v : idx) v = uint8_t(rng() & ((1u << bits) - 1));
      const int64_t row_bytes = (n * bits + 7) / 8;
      constexpr int kGuard = 8;
      std::vector<uint8_t> buf(row_bytes + kGuard, 0xa5);
      pack_indices(idx.data(), n, bits, buf.data());
      for (int g = 0; g < kGuard; ++g) CHECK(buf[row_bytes + g] == 0xa5);  // nothing past the row
      buf.resize(row_bytes);  // exact size: a read past the row shows under ASan
      buf.shrink_to_fit();
      bool same = true, layout = true;
      for (int64_t j = 0; j < n; ++j) {
        same &= unpack_index(buf.data(), j, bits) == idx[j];
        int v = 0;
        for (int b = 0; b < bits; ++b) v |= stream_bit(buf, j * bits + b) << b;
        layout &= v == idx[j];
      }
      CHECK(same);
      CHECK(layout);
      for (int64_t p = n * bits; p < row_bytes * 8; ++p)
        CHECK(stream_bit(buf, p) == 0);  // zero padding
    }
  }
}

TEST_CASE("pack_indices keeps only the low bits") {
  std::vector<uint8_t> idx = {0xff, 0xf0, 0x13};
  std::vector<uint8_t> out(2);
  pack_indices(idx.data(), 3, 3, out.data());
  CHECK(unpack_index(out.data(), 0, 3) == 7);
  CHECK(unpack_index(out.data(), 1, 3) == 0);
  CHECK(unpack_index(out.data(), 2, 3) == 3);
}

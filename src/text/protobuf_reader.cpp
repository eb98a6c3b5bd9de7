// Minimal protobuf wire-format reader (see protobuf_reader.h).
#include "text/protobuf_reader.h"

#include <fmt/format.h>

#include <cstring>

#include "kmq/error.h"

namespace kmq::text {

float ProtoField::as_float() const {
  const uint32_t bits = uint32_t(value);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

int32_t ProtoField::as_int32() const { return int32_t(uint32_t(value & 0xFFFFFFFFu)); }

void ProtoReader::fail(const std::string& what) const {
  throw Error(fmt::format("{}: malformed protobuf at byte {}: {}", where_, pos_, what));
}

uint64_t ProtoReader::read_varint() {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos_ >= buf_.size()) fail("truncated varint");
    const uint8_t b = uint8_t(buf_[pos_++]);
    v |= uint64_t(b & 0x7F) << shift;
    if ((b & 0x80) == 0) return v;
  }
  fail("varint longer than 10 bytes");
}

bool ProtoReader::next(ProtoField& f) {
  if (pos_ >= buf_.size()) return false;
  const uint64_t key = read_varint();
  f = ProtoField{};
  if ((key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF) fail(fmt::format("bad field number {}", key >> 3));
  f.number = uint32_t(key >> 3);
  f.wire = uint8_t(key & 7);
  switch (f.wire) {
    case 0:
      f.value = read_varint();
      break;
    case 1:
    case 5: {
      const size_t n = f.wire == 1 ? 8 : 4;
      if (buf_.size() - pos_ < n) fail(fmt::format("field {}: truncated fixed{}", f.number, n * 8));
      uint64_t v = 0;
      for (size_t k = 0; k < n; ++k) v |= uint64_t(uint8_t(buf_[pos_ + k])) << (8 * k);
      f.value = v;
      pos_ += n;
      break;
    }
    case 2: {
      const uint64_t len = read_varint();
      if (len > buf_.size() - pos_)
        fail(fmt::format("field {}: length {} past the end ({} bytes left)", f.number, len,
                         buf_.size() - pos_));
      f.bytes = buf_.substr(pos_, size_t(len));
      pos_ += size_t(len);
      break;
    }
    default:
      fail(fmt::format("field {}: unsupported wire type {}", f.number, f.wire));
  }
  return true;
}

void ProtoReader::expect(const ProtoField& f, uint8_t wire, const char* name) const {
  if (f.wire != wire)
    throw Error(
        fmt::format("{}: field {} ({}) has wire type {}, expected {}", where_, f.number, name, f.wire, wire));
}

}  // namespace kmq::text

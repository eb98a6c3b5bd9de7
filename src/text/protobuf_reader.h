// Minimal protobuf wire-format reader (enough for SentencePiece .model files): walks the
// fields of one message, bounds-checked, no schema and no allocation.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace kmq::text {

struct ProtoField {
  uint32_t number = 0;
  uint8_t wire = 0;        // 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32
  uint64_t value = 0;      // varint value, or the raw little-endian bits of fixed32/64
  std::string_view bytes;  // wire 2: the payload (points into the reader's buffer)

  float as_float() const;    // fixed32 bits as IEEE float
  int32_t as_int32() const;  // varint as protobuf int32 (negative values are 10-byte varints)
};

class ProtoReader {
 public:
  // `where` names the file and message in error messages.
  ProtoReader(std::string_view buf, std::string where) : buf_(buf), where_(std::move(where)) {}
  // Reads the next field into f; false at the end of the message. Throws kmq::Error on a
  // truncated field, an over-long varint, a group or an unknown wire type.
  bool next(ProtoField& f);
  // Throws kmq::Error unless f has the given wire type.
  void expect(const ProtoField& f, uint8_t wire, const char* name) const;
  const std::string& where() const { return where_; }

 private:
  uint64_t read_varint();
  [[noreturn]] void fail(const std::string& what) const;

  std::string_view buf_;
  size_t pos_ = 0;
  std::string where_;
};

}  // namespace kmq::text

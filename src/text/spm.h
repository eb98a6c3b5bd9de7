// SentencePiece BPE encoding (TokenizerKind::kSpm): normalization, score-ordered pair
// merges and byte fallback, following sentencepiece's bpe_model.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kmq/tokenizer.h"

namespace kmq::text {

inline constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

// Parses a SentencePiece ModelProto (tokenizer.model bytes). Throws kmq::Error naming `where`.
TokenizerData parse_spm_model_proto(std::string_view buf, const std::string& where);

class SpmEncoder {
 public:
  // `d` must be validated and must outlive the encoder (pieces are viewed, not copied).
  explicit SpmEncoder(const TokenizerData& d);

  // Encodes one segment of plain text (no control tokens inside; user-defined pieces are
  // matched here, as sentencepiece does). `dummy_prefix`: prepend U+2581 when the data
  // asks for a dummy prefix. Appends ids to `out`.
  void encode(std::string_view text, bool dummy_prefix, std::vector<int32_t>& out) const;

 private:
  struct Symbol {
    uint32_t start, len;  // byte range in the normalized text
    int32_t prev, next;   // neighbours in the live list (-1 = none)
    bool frozen;          // user-defined piece: never merged
  };
  void encode_word(std::string_view s, std::vector<int32_t>& out) const;  // normalized text
  int32_t lookup(std::string_view piece) const;  // normal / user-defined / unused, else -1
  void emit(
      std::string_view piece, std::vector<int32_t>& out,
      const std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>& rev_merge,
      int depth) const;

  const TokenizerData& d_;
  std::unordered_map<std::string_view, int32_t> pieces_;
  std::array<int32_t, 256> byte_ids_{};  // <0xXX> pieces, -1 if absent
  std::array<std::vector<int32_t>, 256> user_by_first_byte_;
  bool split_words_ = false;  // see encode()  // user-defined, longest first
};

}  // namespace kmq::text

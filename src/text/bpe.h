// Byte-level BPE encoding (TokenizerKind::kBpe): regex pre-tokenization, then per piece
// either merge-rule BPE (Hugging Face merges, lowest rank first) or tiktoken rank BPE
// (merge the adjacent pair whose concatenation has the lowest id).
#pragma once
#include <array>
#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kmq/tokenizer.h"
#include "text/pretokenize.h"

namespace kmq::text {

class BpeEncoder {
 public:
  // `d` must be validated and must outlive the encoder. Throws kmq::Error on a merge whose
  // parts or result are not tokens.
  explicit BpeEncoder(const TokenizerData& d);

  // Encodes plain text (no special tokens inside); appends ids to `out`. Repeated pieces
  // are looked up in a per-call cache, so encoding a whole book is fast.
  void encode(std::string_view text, std::vector<int32_t>& out) const;

 private:
  struct Merge {
    int32_t rank, id;
  };
  struct Scratch;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out, Scratch& s) const;
  int32_t lookup(std::string_view bytes) const;

  const TokenizerData& d_;
  PreTokenizer pre_;
  bool rank_mode_;                                       // no merges: tiktoken ranks
  std::unordered_map<std::string_view, int32_t> vocab_;  // normal tokens: bytes -> id
  std::unordered_map<uint64_t, Merge> merges_;           // (left id << 32 | right id) -> merge
  std::array<int32_t, 256> byte_ids_{};                  // single-byte tokens, -1 if absent
};

}  // namespace kmq::text

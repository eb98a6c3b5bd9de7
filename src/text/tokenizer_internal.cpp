// Validation of TokenizerData and end-of-generation conventions (see tokenizer_internal.h).
#include "text/tokenizer_internal.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <unordered_set>

#include "kmq/error.h"
#include "text/text_util.h"

namespace kmq::text {

bool is_known_pre_tokenizer(std::string_view name) {
  return name == "gpt2" || name == "llama3" || name == "qwen2";
}

void validate_tokenizer_data(const TokenizerData& d, const std::string& where) {
  const size_t n = d.tokens.size();
  if (n == 0) throw Error(where + ": tokenizer has no tokens");
  if (n > kMaxVocab) throw Error(fmt::format("{}: tokenizer has {} tokens (limit {})", where, n, kMaxVocab));
  if (d.kind != TokenizerKind::kSpm && d.kind != TokenizerKind::kBpe)
    throw Error(fmt::format("{}: unknown tokenizer kind {}", where, int(d.kind)));
  if (!d.scores.empty() && d.scores.size() != n)
    throw Error(fmt::format("{}: {} scores for {} tokens", where, d.scores.size(), n));
  if (!d.types.empty() && d.types.size() != n)
    throw Error(fmt::format("{}: {} token types for {} tokens", where, d.types.size(), n));
  for (size_t i = 0; i < d.types.size(); ++i) {
    const int t = int(d.types[i]);
    if (t < int(TokenType::kNormal) || t > int(TokenType::kByte))
      throw Error(fmt::format("{}: token {} has invalid type {}", where, i, t));
    if (d.types[i] == TokenType::kByte && parse_byte_piece(d.tokens[i]) < 0)
      throw Error(fmt::format("{}: byte token {} is not of the form <0xXX>", where, i));
  }
  const auto check_id = [&](int32_t id, const char* name) {
    if (id < -1 || (id >= 0 && size_t(id) >= n))
      throw Error(fmt::format("{}: {} {} out of range [0, {})", where, name, id, n));
  };
  check_id(d.bos_id, "bos_id");
  check_id(d.eos_id, "eos_id");
  check_id(d.unk_id, "unk_id");
  check_id(d.pad_id, "pad_id");
  for (int32_t id : d.eog_ids) {
    if (id < 0) throw Error(fmt::format("{}: eog id {} out of range [0, {})", where, id, n));
    check_id(id, "eog id");
  }
  if (d.add_bos && d.bos_id < 0) throw Error(where + ": add_bos is set but there is no bos_id");
  if (d.add_eos && d.eos_id < 0) throw Error(where + ": add_eos is set but there is no eos_id");
  if (d.kind == TokenizerKind::kBpe) {
    if (!is_known_pre_tokenizer(d.pre_tokenizer))
      throw Error(
          fmt::format("{}: unknown pre-tokenizer '{}' (known: gpt2, llama3, qwen2)", where, d.pre_tokenizer));
    if (!d.merges.empty()) {
      std::unordered_set<std::string_view> normal;
      normal.reserve(n);
      for (size_t i = 0; i < n; ++i)
        if (d.types.empty() || d.types[i] == TokenType::kNormal) normal.insert(d.tokens[i]);
      std::string joined;
      for (size_t r = 0; r < d.merges.size(); ++r) {
        const auto& [a, b] = d.merges[r];
        joined = a + b;
        if (!normal.count(a) || !normal.count(b) || !normal.count(joined))
          throw Error(fmt::format("{}: merge {} joins pieces that are not normal tokens", where, r));
      }
    }
  } else {
    if (!d.merges.empty()) throw Error(where + ": a SentencePiece tokenizer has no merges");
    if (!d.pre_tokenizer.empty()) throw Error(where + ": a SentencePiece tokenizer has no pre-tokenizer");
  }
}

void set_eog_ids(TokenizerData& d, const std::vector<int32_t>& extra) {
  static constexpr std::array<std::string_view, 7> kEogNames = {
      "<|eot_id|>",    "<|eom_id|>",    "<|im_end|>",     "<|end|>",
      "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>"};
  std::vector<int32_t> ids = d.eog_ids;
  if (d.eos_id >= 0) ids.push_back(d.eos_id);
  for (int32_t id : extra)
    if (id >= 0 && size_t(id) < d.tokens.size()) ids.push_back(id);
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const TokenType t = d.types.empty() ? TokenType::kNormal : d.types[i];
    if (t != TokenType::kControl && t != TokenType::kUserDefined) continue;
    if (std::find(kEogNames.begin(), kEogNames.end(), d.tokens[i]) != kEogNames.end())
      ids.push_back(int32_t(i));
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  d.eog_ids = std::move(ids);
}

int32_t find_token(const TokenizerData& d, std::string_view text) {
  for (size_t i = 0; i < d.tokens.size(); ++i)
    if (d.tokens[i] == text) return int32_t(i);
  return -1;
}

}  // namespace kmq::text

// tiktoken rank files (Llama-3 tokenizer.model): one "<base64 bytes> <rank>" per line; the
// rank is the token id and the merge priority (TokenizerData.merges stays empty).
#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "kmq/error.h"
#include "kmq/tokenizer.h"
#include "text/text_util.h"
#include "text/tokenizer_internal.h"
#include "util/mmap_file.h"

namespace kmq {
namespace text {
namespace {

constexpr size_t kLlama3BaseVocab = 128000;
constexpr size_t kLlama3Specials = 256;

// The Llama 3.2 special-token list (ids 128000..128255), as in Meta's Hugging Face releases.
std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> s = {"<|begin_of_text|>",
                                "<|end_of_text|>",
                                "<|reserved_special_token_0|>",
                                "<|reserved_special_token_1|>",
                                "<|finetune_right_pad_id|>",
                                "<|step_id|>",
                                "<|start_header_id|>",
                                "<|end_header_id|>",
                                "<|eom_id|>",
                                "<|eot_id|>",
                                "<|python_tag|>",
                                "<|image|>"};
  for (int i = 2; s.size() < kLlama3Specials; ++i)
    s.push_back(fmt::format("<|reserved_special_token_{}|>", i));
  return s;
}

}  // namespace

bool looks_like_tiktoken(std::string_view head) {
  const size_t eol = head.find('\n');
  std::string_view line = head.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const size_t sp = line.find(' ');
  if (sp == std::string_view::npos || sp == 0 || sp + 1 >= line.size()) return false;
  for (size_t i = 0; i < sp; ++i) {
    const char c = line[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
          c == '/' || c == '='))
      return false;
  }
  for (size_t i = sp + 1; i < line.size(); ++i)
    if (line[i] < '0' || line[i] > '9') return false;
  return true;
}

TokenizerData parse_tiktoken(std::string_view text, const std::string& where) {
  TokenizerData d;
  d.kind = TokenizerKind::kBpe;
  d.pre_tokenizer = "llama3";  // also cl100k_base's pattern
  std::vector<std::pair<int64_t, std::string>> entries;
  int64_t max_rank = -1;
  size_t line_no = 0;
  std::string bytes;
  for (size_t pos = 0; pos < text.size();) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos)
      throw Error(fmt::format("{}: line {}: expected \"<base64> <rank>\"", where, line_no));
    int64_t rank = -1;
    const std::string_view rs = line.substr(sp + 1);
    const auto [end, ec] = std::from_chars(rs.data(), rs.data() + rs.size(), rank);
    if (ec != std::errc() || end != rs.data() + rs.size() || rank < 0 || size_t(rank) >= kMaxVocab)
      throw Error(fmt::format("{}: line {}: bad rank '{}'", where, line_no, rs));
    if (!base64_decode(line.substr(0, sp), bytes) || bytes.empty())
      throw Error(fmt::format("{}: line {}: bad base64 token", where, line_no));
    entries.emplace_back(rank, bytes);
    max_rank = std::max(max_rank, rank);
  }
  if (entries.empty()) throw Error(where + ": no tokens");
  // Ranks are ids: allow some holes, but not a sparse file that would allocate millions.
  if (size_t(max_rank) >= 2 * entries.size() + 1024)
    throw Error(fmt::format("{}: rank {} is implausible for {} tokens", where, max_rank, entries.size()));
  d.tokens.resize(size_t(max_rank) + 1);
  d.types.resize(size_t(max_rank) + 1, TokenType::kUnused);
  std::vector<bool> seen(size_t(max_rank) + 1, false);
  for (auto& [rank, b] : entries) {
    if (seen[rank]) throw Error(fmt::format("{}: rank {} appears twice", where, rank));
    seen[rank] = true;
    d.tokens[rank] = std::move(b);
    d.types[rank] = TokenType::kNormal;
  }
  if (d.tokens.size() == kLlama3BaseVocab) {
    for (auto& s : llama3_special_tokens()) {
      d.tokens.push_back(std::move(s));
      d.types.push_back(TokenType::kControl);
    }
    d.bos_id = int32_t(find_token(d, "<|begin_of_text|>"));
    d.eos_id = int32_t(find_token(d, "<|end_of_text|>"));
    d.add_bos = true;
  }
  d.add_dummy_prefix = false;
  d.byte_fallback = false;
  set_eog_ids(d);
  validate_tokenizer_data(d, where);
  return d;
}

}  // namespace text

TokenizerData load_tokenizer_tiktoken(const std::filesystem::path& model_file) {
  MappedFile f(model_file);
  return text::parse_tiktoken(std::string_view(reinterpret_cast<const char*>(f.data()), f.size()),
                              model_file.string());
}

}  // namespace kmq

// Regex pre-tokenization with PCRE2 (see pretokenize.h). The patterns are the published
// ones of GPT-2, Llama-3 and Qwen2; PCRE2_UCP makes \s, \p{L}, \p{N} Unicode-aware and
// PCRE2_MATCH_INVALID_UTF lets arbitrary bytes through without undefined behaviour.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/pretokenize.h"

#include <fmt/format.h>
#include <pcre2.h>

#include <array>
#include <memory>

#include "kmq/error.h"

namespace kmq::text {
namespace {

constexpr std::string_view kGpt2 =
    R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kLlama3 =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kQwen2 =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

struct Known {
  std::string_view name, regex;
};
// Spellings seen in tokenizer.json files, mapped to the pattern we run.
constexpr std::array<Known, 6> kKnownRegexes = {{
    {"gpt2", kGpt2},
    {"gpt2", R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))re"},
    {"llama3", kLlama3},
    {"llama3",
     R"re((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re"},
    {"qwen2", kQwen2},
    {"qwen2",
     R"re((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re"},
}};

struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
struct MatchContextDeleter {
  void operator()(pcre2_match_context* c) const { pcre2_match_context_free(c); }
};
struct JitStackDeleter {
  void operator()(pcre2_jit_stack* s) const { pcre2_jit_stack_free(s); }
};

}  // namespace

std::string_view pre_tokenizer_pattern(std::string_view name) {
  if (name == "gpt2") return kGpt2;
  if (name == "llama3") return kLlama3;
  if (name == "qwen2") return kQwen2;
  return {};
}

std::string pre_tokenizer_name_for_regex(std::string_view regex) {
  for (const auto& k : kKnownRegexes)
    if (k.regex == regex) return std::string(k.name);
  return {};
}

PreTokenizer::PreTokenizer(std::string_view name) {
  const std::string_view pattern = pre_tokenizer_pattern(name);
  if (pattern.empty()) throw Error(fmt::format("tokenizer: unknown pre-tokenizer '{}'", name));
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
  if (!code) {
    std::array<PCRE2_UCHAR, 256> msg{};
    pcre2_get_error_message(err, msg.data(), msg.size());
    throw Error(fmt::format("tokenizer: pre-tokenizer '{}' regex does not compile at {}: {}", name, err_off,
                            reinterpret_cast<const char*>(msg.data())));
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

PreTokenizer::~PreTokenizer() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  if (text.empty()) return;
  auto* code = static_cast<pcre2_code*>(code_);
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create_from_pattern(code, nullptr));
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> mc(pcre2_match_context_create(nullptr));
  std::unique_ptr<pcre2_jit_stack, JitStackDeleter> stack;
  if (!md || !mc) throw Error("tokenizer: out of memory for regex match data");
  if (jit_) {
    stack.reset(pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr));
    if (stack) pcre2_jit_stack_assign(mc.get(), nullptr, stack.get());
  }
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    const int rc = pcre2_match(code, subject, text.size(), pos, 0, md.get(), mc.get());
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      std::array<PCRE2_UCHAR, 256> msg{};
      pcre2_get_error_message(rc, msg.data(), msg.size());
      throw Error(fmt::format("tokenizer: pre-tokenizer regex failed at byte {}: {}", pos,
                              reinterpret_cast<const char*>(msg.data())));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    size_t b = ov[0], e = ov[1];
    if (b < pos || e > text.size() || e < b) break;         // cannot happen; stay safe
    if (b > pos) out.push_back(text.substr(pos, b - pos));  // unmatched bytes
    if (e == b) {  // empty match (no pattern allows one): step over one byte
      e = b + 1;
    }
    out.push_back(text.substr(b, e - b));
    pos = e;
  }
  if (pos < text.size()) out.push_back(text.substr(pos));
}

}  // namespace kmq::text

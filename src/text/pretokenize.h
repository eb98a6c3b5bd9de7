// Regex pre-tokenization for byte-level BPE (GPT-2, Llama-3, Qwen2 patterns) with PCRE2 in
// UTF-8 + Unicode-property mode, JIT-compiled where available.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace kmq::text {

// The regex source of a named pre-tokenizer ("gpt2", "llama3", "qwen2"), or "" if unknown.
std::string_view pre_tokenizer_pattern(std::string_view name);
// The name whose pattern a Hugging Face tokenizer.json regex is (a few spellings of each
// are known), or "" when the pattern is not one we implement.
std::string pre_tokenizer_name_for_regex(std::string_view regex);

class PreTokenizer {
 public:
  explicit PreTokenizer(std::string_view name);  // throws kmq::Error for an unknown name
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Appends to `out` consecutive pieces that cover every byte of `text` in order. Bytes the
  // regex cannot match (invalid UTF-8) become pieces of their own. Thread-safe.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace kmq::text

// Tokenizers: SentencePiece-style BPE (Llama-2, Mistral, TinyLlama, stories260K) and
// byte-level BPE with regex pre-tokenization (GPT-2, Llama-3, Qwen2), special tokens
// included. TokenizerData is the plain description stored in a .kmq file; Tokenizer
// encodes and decodes with it. Loaders read the checkpoint formats (converter side).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kmq {

enum class TokenizerKind : uint8_t {
  kSpm = 0,  // SentencePiece BPE: pieces with scores, U+2581 for space, <0xXX> byte fallback
  kBpe = 1,  // byte-level BPE: GPT-2 byte<->unicode mapping, merges or tiktoken ranks
};

// SentencePiece piece types (the same numbers as sentencepiece_model.proto).
enum class TokenType : uint8_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // <s>, </s>, <|eot_id|>: never produced by encoding plain text
  kUserDefined = 4,  // matched verbatim in text before pre-tokenization
  kUnused = 5,
  kByte = 6,         // <0x41>
};

struct TokenizerData {
  TokenizerKind kind = TokenizerKind::kSpm;
  // Token text. kSpm: the piece as in the .model file (U+2581 for space). kBpe: the raw
  // bytes of the token (NOT the GPT-2 unicode-mapped form), so decoding is concatenation.
  std::vector<std::string> tokens;
  std::vector<float> scores;     // kSpm: piece scores (merge priority); may be empty for kBpe
  std::vector<TokenType> types;  // one per token
  // kBpe: merge rules in priority order as pairs of raw-byte strings. Empty means
  // tiktoken-style ranks: merge the adjacent pair whose concatenation has the lowest id.
  std::vector<std::pair<std::string, std::string>> merges;
  std::string pre_tokenizer;  // kBpe regex set: "gpt2", "llama3", "qwen2"; kSpm: ""
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  std::vector<int32_t> eog_ids;  // end-of-generation ids besides eos (e.g. <|eot_id|>)
  bool add_bos = false;
  bool add_eos = false;
  bool add_dummy_prefix = true;          // kSpm: prepend a space to the text
  bool remove_extra_whitespaces = false; // kSpm normalizer: collapse/strip spaces
  bool byte_fallback = true;             // kSpm: unknown chars -> <0xXX> pieces
  std::string chat_template;             // Jinja text from tokenizer_config.json, or ""
};

class Tokenizer {
 public:
  explicit Tokenizer(TokenizerData data);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Encode text. add_special: prepend BOS / append EOS as the data says.
  // parse_special: recognise special-token text (e.g. "<|eot_id|>") in `text`.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true,
                              bool parse_special = false) const;
  // The bytes of one token (may be an incomplete UTF-8 sequence); "" for control tokens.
  std::string decode_token(int32_t id) const;
  std::string decode(const std::vector<int32_t>& ids) const;

  const TokenizerData& data() const;
  int32_t n_vocab() const;
  bool is_eog(int32_t id) const;  // eos or any eog id

 private:
  struct Impl;
  Impl* impl_;
};

// --- loaders (used by kmq-convert; they throw kmq::Error naming the file) ---
// A Hugging Face directory: tokenizer.json if present, else tokenizer.model (SentencePiece
// protobuf or tiktoken base64 ranks, detected by content); tokenizer_config.json for
// add_bos/add_eos, special tokens and chat_template.
TokenizerData load_tokenizer_hf_dir(const std::filesystem::path& dir);
TokenizerData load_tokenizer_hf_json(const std::filesystem::path& tokenizer_json);
TokenizerData load_tokenizer_spm_model(const std::filesystem::path& model_file);
TokenizerData load_tokenizer_tiktoken(const std::filesystem::path& model_file);
// llama2.c tokenizer.bin (max_token_length, then per token: score f32, len i32, bytes).
// n_vocab <= 0 reads tokens until the end of the file.
TokenizerData load_tokenizer_llama2c(const std::filesystem::path& bin_file, int64_t n_vocab);
// GPT-2's original vocab.json + merges.txt pair (byte-level BPE, <|endoftext|> = BOS/EOS).
TokenizerData load_tokenizer_gpt2_files(const std::filesystem::path& vocab_json,
                                        const std::filesystem::path& merges_txt);

}  // namespace kmq

// Hugging Face tokenizer.json / tokenizer_config.json reading, shared by the HF loaders.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "kmq/tokenizer.h"

namespace kmq::text {

// Parses a JSON file; throws kmq::Error naming the file on I/O or syntax errors.
nlohmann::json read_json_file(const std::filesystem::path& path);

// A tokenizer.json document -> TokenizerData. Byte-level BPE (ByteLevel pre-tokenizer or
// decoder) becomes kBpe; SentencePiece-style BPE (byte_fallback / Metaspace / U+2581) becomes
// kSpm with scores synthesized from the merge order. Throws kmq::Error prefixed with `where`.
TokenizerData hf_tokenizer_json_to_data(const nlohmann::json& j, const std::string& where);

// Applies a tokenizer_config.json: added_tokens_decoder, bos/eos/unk/pad_token,
// add_bos_token, add_eos_token, chat_template (a string, or a list of named templates of
// which "default" is taken, else the first).
void apply_tokenizer_config(TokenizerData& d, const nlohmann::json& cfg, const std::string& where);

}  // namespace kmq::text

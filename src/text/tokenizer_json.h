// TokenizerData <-> JSON: how a .kmq model file stores its tokenizer. The reader
// validates everything (types, sizes, id ranges) because model files come from strangers.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "kmq/tokenizer.h"

namespace kmq {

// Layout (format_version 1), one object:
//   "format_version": 1, "kind": "spm" | "bpe",
//   "tokens":  [tok...]        one per id; see "byte strings" below
//   "scores":  [number...]     empty or one per id; non-finite values as "inf", "-inf", "nan"
//   "types":   [int...]        one per id, TokenType numbers 1..6
//   "merges":  [[a, b]...]     byte strings, priority order (kBpe; empty = tiktoken ranks)
//   "pre_tokenizer": "gpt2" | "llama3" | "qwen2" | ""
//   "bos_id", "eos_id", "unk_id", "pad_id": int (-1 = none)   "eog_ids": [int...]
//   "add_bos", "add_eos", "add_dummy_prefix", "remove_extra_whitespaces", "byte_fallback": bool
//   "chat_template": string
// Byte strings (tokens and merge parts are raw bytes, which JSON strings cannot hold in
// general): a byte string that is valid UTF-8 is written as a JSON string; any other is
// written as {"b64": "<standard base64 of the bytes>"}. Round trip is exact, scores
// included (float -> double is exact and JSON keeps doubles exactly).
nlohmann::json tokenizer_to_json(const TokenizerData& data);
// Throws kmq::Error whose message starts with `where` on any malformed input.
TokenizerData tokenizer_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace kmq

// Internal helpers shared by the tokenizer loaders, the JSON reader and the Tokenizer:
// validation of TokenizerData and the end-of-generation conventions.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "kmq/tokenizer.h"

namespace kmq::text {

// Upper bound on vocabulary size accepted from any file (a sanity limit against
// allocation bombs; the largest real vocabularies are ~260k).
inline constexpr size_t kMaxVocab = size_t(1) << 24;

// Throws kmq::Error prefixed with `where` unless `d` is self-consistent: sizes of
// scores/types, type values, byte-piece names, id ranges, pre-tokenizer name, merge parts
// being tokens. Empty `types` is accepted (means all kNormal).
void validate_tokenizer_data(const TokenizerData& d, const std::string& where);

// Fills d.eog_ids: eos_id plus every control/user-defined token whose text is a known
// end-of-turn marker (<|eot_id|>, <|eom_id|>, <|im_end|>, <|end|>, <end_of_turn>,
// <|endoftext|>, <|end_of_text|>), plus `extra` ids; sorted, without duplicates.
void set_eog_ids(TokenizerData& d, const std::vector<int32_t>& extra = {});

// The first id whose token text equals `text` (linear search; loaders only), or -1.
int32_t find_token(const TokenizerData& d, std::string_view text);

// Is `name` a pre-tokenizer we implement ("gpt2", "llama3", "qwen2")?
bool is_known_pre_tokenizer(std::string_view name);

// Parses a tiktoken rank file ("<base64 token> <rank>" per line). A 128000-token file is
// taken to be Llama-3's and gets its 256 special tokens (the Llama 3.2 list), BOS/EOS/EOG.
TokenizerData parse_tiktoken(std::string_view text, const std::string& where);
// Does the start of a tokenizer.model file look like tiktoken text rather than protobuf?
bool looks_like_tiktoken(std::string_view head);

}  // namespace kmq::text

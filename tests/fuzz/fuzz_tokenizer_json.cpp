// Fuzz target: tokenizer_from_json (the tokenizer stored in a .kmq file's metadata). The
// input is JSON text: the tokenizer object itself, or a whole metadata object whose
// "tokenizer" member is used. An accepted tokenizer must encode and decode, and must
// survive tokenizer_to_json -> tokenizer_from_json unchanged in size.
#include <nlohmann/json.hpp>

#include "fuzz_tokenizer_loaders.h"
#include "text/tokenizer_json.h"

KMQ_FUZZ_TARGET(tokenizer_json) {
  auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  if (j.is_object() && j.contains("tokenizer")) j = j["tokenizer"];
  try {
    const kmq::TokenizerData d = kmq::tokenizer_from_json(j, "fuzz");
    kmq::fuzz::exercise_tokenizer(d);
    const kmq::TokenizerData back = kmq::tokenizer_from_json(kmq::tokenizer_to_json(d), "fuzz2");
    KMQ_FUZZ_CHECK(!(back.tokens != d.tokens || back.merges != d.merges || back.types != d.types));
  } catch (const kmq::Error&) {
  }
  return 0;
}

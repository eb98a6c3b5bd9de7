// Fuzz target: load_tokenizer_tiktoken on a file holding the input; an accepted tokenizer must
// encode and decode (fuzz_tokenizer_loaders.h). kmq::Error is fine; crashes and UB are not.
#include "fuzz_tokenizer_loaders.h"

KMQ_FUZZ_TARGET(tok_tiktoken) {
  return kmq::fuzz::fuzz_loader("tiktoken.model", data, size, [](const auto& p) { return kmq::load_tokenizer_tiktoken(p); });
}

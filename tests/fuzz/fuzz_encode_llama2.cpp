// Fuzz target: Llama-2 SentencePiece (shared tokenizers/llama2-spm/tokenizer.model) on
// arbitrary bytes; see fuzz_encode.h for the properties checked.
#include "fuzz_encode.h"

static const kmq::Tokenizer& llama2_tokenizer() {
  static const kmq::Tokenizer tok(
      kmq::load_tokenizer_spm_model(kmq::fuzz::shared_dir() / "tokenizers/llama2-spm/tokenizer.model"));
  return tok;
}

KMQ_FUZZ_TARGET(encode_llama2) {
  kmq::fuzz::check_encode(llama2_tokenizer(), data, size);
  return 0;
}

// Fuzz target: GPT-2 byte-level BPE (kmq-novels-51m tokenizer.json from the shared folder)
// on arbitrary bytes; see fuzz_encode.h for the properties checked.
#include "fuzz_encode.h"

static const kmq::Tokenizer& gpt2_tokenizer() {
  static const kmq::Tokenizer tok(
      kmq::load_tokenizer_hf_json(kmq::fuzz::shared_dir() / "models/kmq-novels-51m/tokenizer.json"));
  return tok;
}

KMQ_FUZZ_TARGET(encode_gpt2) {
  kmq::fuzz::check_encode(gpt2_tokenizer(), data, size);
  return 0;
}

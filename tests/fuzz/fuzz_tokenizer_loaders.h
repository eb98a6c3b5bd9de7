// Shared body of the tokenizer loader fuzz targets: load a file holding the input with one
// loader; when it is accepted, the tokenizer built from it must encode and decode text.
#pragma once
#include <string>

#include "fuzz_util.h"
#include "kmq/error.h"
#include "kmq/tokenizer.h"

namespace kmq::fuzz {

inline void exercise_tokenizer(const TokenizerData& d) {
  Tokenizer tok(d);
  static const char* const kTexts[] = {
      "Hello world", " leading space,  two  spaces\n\ttab", "<s>[INST] hi [/INST]</s><|endoftext|>",
      "caf\xc3\xa9 \xe2\x96\x81 \xf0\x9f\x98\x80 \xff\xfe bad", ""};
  for (const char* t : kTexts) {
    for (int flags = 0; flags < 4; ++flags) {
      const auto ids = tok.encode(t, flags & 1, flags & 2);
      for (int32_t id : ids)
        KMQ_FUZZ_CHECK(!(id < 0 || id >= tok.n_vocab()));
      (void)tok.decode(ids);
    }
  }
  for (int32_t id = -1; id <= tok.n_vocab() && id < 300; ++id) (void)tok.decode_token(id);
}

template <class Load>
int fuzz_loader(const char* tag, const uint8_t* data, size_t size, Load load) {
  const auto path = write_temp(tag, data, size);
  try {
    exercise_tokenizer(load(path));
  } catch (const kmq::Error&) {
  }
  return 0;
}

}  // namespace kmq::fuzz

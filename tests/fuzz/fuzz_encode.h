// Shared body of the encode fuzz targets: a real tokenizer encodes arbitrary bytes without
// crashing, ids stay in range, and decode(encode(s)) == s for valid UTF-8 text without
// special tokens, except where docs/TOKENIZERS.md says it cannot hold: kSpm turns a literal
// U+2581 into a space, and remove_extra_whitespaces changes runs of spaces.
#pragma once
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "kmq/tokenizer.h"
#include "text/text_util.h"

namespace kmq::fuzz {

inline void check_encode(const Tokenizer& tok, const uint8_t* data, size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  for (int flags = 0; flags < 4; ++flags) {
    const auto ids = tok.encode(s, flags & 1, flags & 2);
    for (int32_t id : ids)
      KMQ_FUZZ_CHECK(!(id < 0 || id >= tok.n_vocab()));
    (void)tok.decode(ids);
  }
  const auto& d = tok.data();
  if (!text::is_valid_utf8(s)) return;
  if (d.kind == TokenizerKind::kSpm &&
      (d.remove_extra_whitespaces || s.find("\xe2\x96\x81") != std::string_view::npos))
    return;
  const std::string back = tok.decode(tok.encode(s, false, false));
  if (back != s) std::fprintf(stderr, "round trip failed: %zu bytes in, %zu bytes out\n", s.size(), back.size());
  KMQ_FUZZ_CHECK(back == s);
}

}  // namespace kmq::fuzz

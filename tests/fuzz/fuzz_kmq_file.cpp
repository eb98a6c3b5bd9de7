// Fuzz target: the .kmq reader (KmqFile) on a file holding the input. The header, metadata
// and directory checksums are recomputed when their regions lie inside the input, so that
// mutations reach the validation behind them. Any kmq::Error is fine; crashes and UB are not.
#include <cstring>
#include <vector>

#include "format/layout.h"
#include "fuzz_util.h"
#include "kmq/error.h"
#include "kmq/kmq_file.h"
#include "kmq/tokenizer.h"
#include "util/crc32c.h"

namespace kmq_file_fuzz {

void fix_kmq_checksums(std::vector<uint8_t>& b) {
  using kmq::format::DirEntry;
  using kmq::format::FileHeader;
  if (b.size() < sizeof(FileHeader)) return;
  FileHeader h;
  std::memcpy(&h, b.data(), sizeof h);
  const uint64_t n = b.size();
  if (h.meta_offset <= n && h.meta_size <= n - h.meta_offset)
    h.meta_crc = kmq::crc32c(b.data() + h.meta_offset, h.meta_size);
  if (h.dir_count <= n / sizeof(DirEntry) && h.dir_offset <= n &&
      h.dir_count * sizeof(DirEntry) <= n - h.dir_offset)
    h.dir_crc = kmq::crc32c(b.data() + h.dir_offset, h.dir_count * sizeof(DirEntry));
  h.header_crc = 0;
  h.header_crc = kmq::crc32c(&h, sizeof h);
  std::memcpy(b.data(), &h, sizeof h);
}

}  // namespace kmq_file_fuzz

KMQ_FUZZ_TARGET(kmq_file) {
  // The first byte chooses whether checksums are repaired (most inputs) or kept as given.
  if (size == 0) return 0;
  std::vector<uint8_t> bytes(data + 1, data + size);
  if (data[0] != 0xff) kmq_file_fuzz::fix_kmq_checksums(bytes);
  const auto path = kmq::fuzz::write_temp("model.kmq", bytes.data(), bytes.size());
  try {
    kmq::KmqFile f(path);
    (void)f.verify();
    for (const auto& t : f.tensors()) (void)f.get(t.name);
    kmq::Tokenizer tok(f.tokenizer());
    (void)tok.decode(tok.encode("Once upon a time, <s> there was", true, true));
  } catch (const kmq::Error&) {
  }
  return 0;
}

// Fuzz target: the batch-file parser of `kmq complete --batch-file` on arbitrary text,
// as JSON lines and as plain lines. kmq::Error is fine; anything else is a finding.
#include <string>

#include "fuzz_util.h"
#include "kmq/error.h"
#include "runtime/batch_file.h"

KMQ_FUZZ_TARGET(batch_file) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (bool jsonl : {true, false}) {
    try {
      const auto items = kmq::parse_batch_file(text, "batch.jsonl", jsonl, kmq::GenerateOptions{});
      for (const auto& it : items) (void)it.id.dump();
    } catch (const kmq::Error&) {
    }
  }
  return 0;
}

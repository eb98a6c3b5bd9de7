// The batch file of `kmq complete --batch-file`: text in, prompts with their options out.
// A parser of untrusted input (tests/fuzz/fuzz_batch_file.cpp fuzzes it).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kmq/runtime.h"

namespace kmq {

struct BatchItem {
  nlohmann::json id;  // from the file, else the line number
  std::string prompt;
  GenerateOptions options;
};

// prompts.jsonl: one object per line, {"prompt": "...", "id": any, and optional overrides
// "n_predict", "temperature", "top_k", "top_p", "min_p", "seed", "stop"}; blank lines
// skipped. Anything else: one prompt per line (blank lines skipped). Prompt i (0-based)
// gets seed base.sampler.seed + i unless it sets its own. Throws kmq::Error naming
// `path` and the line.
std::vector<BatchItem> parse_batch_file(const std::string& text, const std::string& path, bool jsonl,
                                        const GenerateOptions& base);
// JSON lines by extension (.jsonl, .json, .ndjson), text for .txt, else by the first
// non-blank character.
bool batch_file_is_jsonl(const std::string& path, const std::string& text);

}  // namespace kmq

// The generation loop and perplexity, as library functions; the tools only print.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kmq/model.h"
#include "kmq/sampling.h"

namespace kmq {

struct GenerateOptions {
  int64_t max_tokens = 128;
  SamplerOptions sampler;
  bool stop_at_eog = true;
  int64_t top_logits = 0;  // report the top-K logits of the last prompt position
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids, output_ids;
  std::vector<std::pair<int32_t, float>> top_logits;  // of the last prompt position
  std::string finish_reason;                          // "length", "eos", "stopped"
  double prompt_seconds = 0, gen_seconds = 0;
};

// Called with each new token; return false to stop.
using TokenCallback = std::function<bool(int32_t id)>;

GenerateResult generate(Session& session, const Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& options, const TokenCallback& on_token);

struct PerplexityOptions {
  int64_t n_ctx = 512;
  int64_t max_chunks = 0;  // 0 = all
  // progress(chunks_done, chunks_total, ppl_so_far)
  std::function<void(int64_t, int64_t, double)> progress;
};

struct PerplexityResult {
  int64_t n_ctx = 0, chunks = 0, tokens_scored = 0, text_tokens = 0;
  double mean_nll = 0, nll_stderr = 0, ppl = 0, ppl_stderr = 0;
  double seconds = 0;
};

// llama.cpp protocol: the token stream (the text tokenized without BOS) is cut into
// non-overlapping chunks of n_ctx; each chunk's first token is replaced by BOS; only the
// second half of each chunk is scored (n_ctx/2 - 1 predictions per chunk).
PerplexityResult perplexity(Model& model, const std::vector<int32_t>& tokens, const PerplexityOptions& options);

}  // namespace kmq

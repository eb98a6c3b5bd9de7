// The generation loop and perplexity, as library functions; the tools only print.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "kmq/model.h"
#include "kmq/sampling.h"

namespace kmq {

struct GenerateOptions {
  int64_t max_tokens = 128;
  SamplerOptions sampler;
  bool stop_at_eog = true;
  int64_t top_logits = 0;  // report the top-K logits of the last prompt position
  std::vector<std::string> stop;  // stop strings: the completion ends before the first one
  // Optional: called with completion text as it becomes safe to show (whole UTF-8
  // characters, nothing that could begin a stop string); return false to stop.
  std::function<bool(std::string_view)> on_text;
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids, output_ids;
  std::vector<std::pair<int32_t, float>> top_logits;  // of the last prompt position
  std::string text;  // the completion: the output tokens' bytes, cut before a stop string
  // "length" (max_tokens), "eos" (an end-of-generation token), "stop" (a stop string),
  // "stopped" (a callback returned false), "context" (the context is full)
  std::string finish_reason;
  double prompt_seconds = 0, gen_seconds = 0;
};

// Streams generated text: holds back bytes that could begin a stop string or that end in
// an incomplete UTF-8 character, and cuts the text before the first stop string.
class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop = {});
  std::string push(std::string_view piece);  // appends; returns the text now safe to show
  std::string flush();                       // the held-back rest (at the end)
  bool stopped() const { return stopped_; }  // a stop string was found
  const std::string& text() const { return text_; }

 private:
  std::vector<std::string> stop_;
  std::string text_;
  size_t shown_ = 0;
  bool stopped_ = false;
};

// Called with each new token; return false to stop.
using TokenCallback = std::function<bool(int32_t id)>;

// The sampler sees prompt + output tokens as its penalty history.
GenerateResult generate(Session& session, const Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& options, const TokenCallback& on_token);

// Batched generation: up to `parallel` sequences decoded together (Model::decode_batch: one
// forward over all active sequences per step, each weight read once per step), a new
// request starting as soon as one finishes. Each request has its own RNG seeded from its
// options.sampler.seed, so the outputs do not depend on `parallel`.
struct BatchRequest {
  std::vector<int32_t> prompt;
  GenerateOptions options;  // on_text is not used
};
struct BatchProgress {
  int64_t done = 0, total = 0, active = 0;
  int64_t prompt_tokens = 0, gen_tokens = 0;  // prompt tokens evaluated, tokens generated so far
  double seconds = 0;
};
struct BatchOptions {
  int64_t parallel = 4;
  int64_t n_ctx = 0;  // per sequence (0: the model's max_seq)
  // Called once per request as it finishes (in completion order; index into requests).
  std::function<void(size_t index, GenerateResult&& result)> on_done;
  std::function<void(const BatchProgress&)> progress;  // after every step
};
void generate_batch(Model& model, const std::vector<BatchRequest>& requests, const BatchOptions& options);

struct PerplexityOptions {
  int64_t n_ctx = 512;
  // 0: the llama.cpp protocol (below). S > 0: sliding windows advancing by S tokens.
  int64_t stride = 0;
  int64_t max_chunks = 0;  // 0 = all (chunks or windows)
  // Write the log-probs of every scored position here (see logprob file format below).
  std::string save_logprobs;
  // Compare with log-probs saved by an earlier run (same tokens, vocabulary and protocol).
  std::string kl_reference;
  // progress(chunks_done, chunks_total, ppl_so_far)
  std::function<void(int64_t, int64_t, double)> progress;
};

// KL-divergence of this model's next-token distributions from the reference's, over the
// scored positions (like llama.cpp's --kl-divergence).
struct KlResult {
  int64_t tokens = 0;
  double kld_mean = 0, kld_stderr = 0;
  double ref_ppl = 0, ref_ppl_stderr = 0;
  double ppl_ratio = 0;  // PPL(this) / PPL(ref)
  double ln_ppl_ratio = 0, ln_ppl_ratio_stderr = 0;  // mean of NLL(this) - NLL(ref)
  double top1_agree = 0, top1_agree_stderr = 0;      // fraction with the same argmax
  double dp_mean = 0, dp_stderr = 0, dp_rms = 0;     // Δp = p(this, target) - p(ref, target)
  // (percent, value): KLD at 0 (min), 1, 5, 10, 50, 90, 99, 99.9, 100 (max); Δp likewise
  // at 0, 0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100.
  std::vector<std::pair<double, double>> kld_percentiles, dp_percentiles;
};

struct PerplexityResult {
  int64_t n_ctx = 0, stride = 0, chunks = 0, tokens_scored = 0, text_tokens = 0;
  double mean_nll = 0, nll_stderr = 0, ppl = 0, ppl_stderr = 0;
  double seconds = 0;
  bool has_kl = false;
  KlResult kl;
};

// What a run will evaluate, before running it (e.g. to size a --save-logits file).
struct PerplexityPlan {
  int64_t chunks = 0, tokens_used = 0, tokens_scored = 0;
};
PerplexityPlan perplexity_plan(int64_t n_tokens, const PerplexityOptions& options);

// stride 0, the llama.cpp protocol: the token stream (the text tokenized without BOS) is
// cut into non-overlapping chunks of n_ctx; each chunk's first token is replaced by BOS;
// only the second half of each chunk is scored (n_ctx/2 - 1 predictions per chunk).
//
// stride S (1 <= S < n_ctx): window w is BOS followed by the n_ctx - 1 text tokens starting
// at w*S; window 0 scores all its n_ctx - 1 text tokens (the first predicted from BOS
// alone), every later window only its last S tokens (those no window scored before), so
// each token is scored once, with at least n_ctx - 1 - S tokens of context. Windows
// continue while a whole one fits; text after the last window is not scored.
//
// Log-prob file (little-endian), written atomically (FILE.tmp-PID, then renamed):
//   0  char[8] magic "KMQLOGP\0"   8 u32 version (1)   12 u32 header bytes (64)
//   16 u64 n_vocab   24 u64 n_ctx   32 u64 stride   40 u64 chunks   48 u64 n_tokens
//   56 u64 n_scored
//   64 i32[n_tokens] the text tokens evaluated (before BOS replacement)
//   then n_scored rows of f32[n_vocab]: log-softmax of the logits at each scored position,
//   in scoring order (4 * n_vocab bytes per scored token: 200 KB for a 50k vocabulary).
PerplexityResult perplexity(Model& model, const std::vector<int32_t>& tokens, const PerplexityOptions& options);

}  // namespace kmq

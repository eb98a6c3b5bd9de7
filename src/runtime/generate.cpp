// generate(): evaluate the prompt, then sample one token at a time, calling back with
// each. Chat and batch completion differ only in the callback.
#include <algorithm>
#include <chrono>
#include <fmt/format.h>
#include <numeric>

#include "kmq/error.h"
#include "kmq/runtime.h"

namespace kmq {

GenerateResult generate(Session& session, const Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& o, const TokenCallback& on_token) {
  using Clock = std::chrono::steady_clock;
  GenerateResult r;
  r.prompt_ids = prompt;
  if (prompt.empty()) throw Error("the prompt is empty (no tokens)");
  if (session.n_past() + int64_t(prompt.size()) > session.n_ctx())
    throw Error(fmt::format("the prompt has {} tokens but the context holds {} (use a shorter prompt or a larger --ctx, up to {})",
                            prompt.size(), session.n_ctx() - session.n_past(), model.config().max_seq));
  const int64_t n_vocab = model.config().n_vocab;
  Rng rng(o.sampler.seed);
  std::vector<float> logits;
  auto t0 = Clock::now();
  session.eval(prompt, &logits, 1);
  r.prompt_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (o.top_logits > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
    std::iota(ids.begin(), ids.end(), 0);
    const int64_t k = std::min(o.top_logits, n_vocab);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int64_t i = 0; i < k; ++i) r.top_logits.emplace_back(ids[i], logits[ids[i]]);
  }
  r.finish_reason = "length";
  auto t1 = Clock::now();
  for (int64_t i = 0; i < o.max_tokens; ++i) {
    const int32_t id = sample(logits.data(), n_vocab, o.sampler, rng);
    if (o.stop_at_eog && model.tokenizer().is_eog(id)) {
      r.finish_reason = "eos";
      break;
    }
    r.output_ids.push_back(id);
    if (on_token && !on_token(id)) {
      r.finish_reason = "stopped";
      break;
    }
    if (i + 1 == o.max_tokens) break;
    if (session.n_past() >= session.n_ctx()) {
      r.finish_reason = "context";
      break;
    }
    session.eval({id}, &logits, 1);
  }
  r.gen_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return r;
}

}  // namespace kmq

// Perplexity by the llama.cpp protocol (see include/kmq/runtime.h), with the standard
// error of the mean NLL.
#include <chrono>
#include <cmath>
#include <fmt/format.h>

#include "kmq/error.h"
#include "kmq/runtime.h"

namespace kmq {

PerplexityResult perplexity(Model& model, const std::vector<int32_t>& tokens, const PerplexityOptions& o) {
  const auto& c = model.config();
  const int64_t n_ctx = o.n_ctx;
  if (n_ctx < 4) throw Error(fmt::format("--ctx {} is too small (at least 4)", n_ctx));
  if (n_ctx > c.max_seq) throw Error(fmt::format("--ctx {} exceeds the model's maximum context {}", n_ctx, c.max_seq));
  int64_t n_chunks = int64_t(tokens.size()) / n_ctx;
  if (n_chunks == 0)
    throw Error(fmt::format("the text has {} tokens, fewer than one chunk of {}", tokens.size(), n_ctx));
  if (o.max_chunks > 0) n_chunks = std::min(n_chunks, o.max_chunks);
  const int32_t bos = int32_t(model.tokenizer().data().bos_id >= 0 ? model.tokenizer().data().bos_id : c.bos_id);
  if (bos < 0) throw Error("the model has no BOS token, which the perplexity protocol needs");
  auto session = model.new_session(n_ctx);
  const int64_t first = n_ctx / 2;
  const int64_t n_vocab = c.n_vocab;
  double sum = 0, sum2 = 0;
  int64_t count = 0;
  std::vector<float> logits;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    std::vector<int32_t> chunk(tokens.begin() + ch * n_ctx, tokens.begin() + (ch + 1) * n_ctx);
    chunk[0] = bos;
    session->reset();
    // logits of positions [first, n_ctx - 1) predict tokens [first + 1, n_ctx)
    const int64_t n_out = n_ctx - first;
    session->eval(chunk, &logits, n_out);
    for (int64_t i = first; i < n_ctx - 1; ++i) {
      const float* lg = logits.data() + (i - first) * n_vocab;
      float mx = lg[0];
      for (int64_t v = 1; v < n_vocab; ++v) mx = std::max(mx, lg[v]);
      double se = 0;
      for (int64_t v = 0; v < n_vocab; ++v) se += std::exp(double(lg[v]) - mx);
      const double nll = std::log(se) + mx - lg[chunk[size_t(i + 1)]];
      sum += nll;
      sum2 += nll * nll;
      ++count;
    }
    if (o.progress) o.progress(ch + 1, n_chunks, std::exp(sum / double(count)));
  }
  PerplexityResult r;
  r.n_ctx = n_ctx;
  r.chunks = n_chunks;
  r.tokens_scored = count;
  r.text_tokens = int64_t(tokens.size());
  r.mean_nll = sum / double(count);
  const double var = sum2 / double(count) - r.mean_nll * r.mean_nll;
  r.nll_stderr = count > 1 ? std::sqrt(std::max(0.0, var) / double(count - 1)) : 0.0;
  r.ppl = std::exp(r.mean_nll);
  r.ppl_stderr = r.ppl * r.nll_stderr;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace kmq

// Perplexity by the llama.cpp protocol or sliding windows (see include/kmq/runtime.h),
// with the standard error of the mean NLL; optionally saves the log-probs of the scored
// positions, or compares with saved ones (KL-divergence, top-1 agreement, Δp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fmt/format.h>
#include <memory>

#include "kmq/error.h"
#include "kmq/runtime.h"
#include "runtime/logprob_file.h"

namespace kmq {

namespace {

// Mean and standard error of the mean.
struct Stat {
  double sum = 0, sum2 = 0;
  int64_t n = 0;
  void add(double x) {
    sum += x;
    sum2 += x * x;
    ++n;
  }
  double mean() const { return n ? sum / double(n) : 0.0; }
  double stderr_() const {
    if (n < 2) return 0.0;
    const double m = mean();
    return std::sqrt(std::max(0.0, sum2 / double(n) - m * m) / double(n - 1));
  }
};

double percentile(std::vector<double>& v, double pct) {  // v sorted
  if (v.empty()) return 0.0;
  const double pos = pct / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - double(lo)) * (v[hi] - v[lo]);
}

// log-softmax of one row, in double, stored as f32; returns the NLL of `target` (double).
double log_softmax(const float* lg, int64_t n, float* out, int32_t target) {
  float mx = lg[0];
  for (int64_t v = 1; v < n; ++v) mx = std::max(mx, lg[v]);
  double se = 0;
  for (int64_t v = 0; v < n; ++v) se += std::exp(double(lg[v]) - mx);
  const double lse = std::log(se) + mx;
  if (out)
    for (int64_t v = 0; v < n; ++v) out[v] = float(double(lg[v]) - lse);
  return lse - lg[target];
}

}  // namespace

PerplexityPlan perplexity_plan(int64_t n_tokens, const PerplexityOptions& o) {
  const int64_t n_ctx = o.n_ctx, S = o.stride;
  if (n_ctx < 4) throw Error(fmt::format("--ctx {} is too small (at least 4)", n_ctx));
  if (S < 0 || S >= n_ctx) throw Error(fmt::format("--stride {} must be in [1, --ctx - 1 = {}] (0: chunks)", S, n_ctx - 1));
  PerplexityPlan p;
  if (S == 0) {
    p.chunks = n_tokens / n_ctx;
    if (p.chunks == 0)
      throw Error(fmt::format("the text has {} tokens, fewer than one chunk of {}", n_tokens, n_ctx));
  } else {
    if (n_tokens < n_ctx - 1)
      throw Error(fmt::format("the text has {} tokens, fewer than one window of {} (+ BOS)", n_tokens, n_ctx - 1));
    p.chunks = 1 + (n_tokens - (n_ctx - 1)) / S;
  }
  if (o.max_chunks > 0) p.chunks = std::min(p.chunks, o.max_chunks);
  if (S == 0) {
    p.tokens_used = p.chunks * n_ctx;
    p.tokens_scored = p.chunks * (n_ctx - n_ctx / 2 - 1);
  } else {
    p.tokens_used = (p.chunks - 1) * S + n_ctx - 1;
    p.tokens_scored = (n_ctx - 1) + (p.chunks - 1) * S;
  }
  return p;
}

PerplexityResult perplexity(Model& model, const std::vector<int32_t>& tokens, const PerplexityOptions& o) {
  const auto& c = model.config();
  const int64_t n_ctx = o.n_ctx, S = o.stride;
  if (n_ctx > c.max_seq) throw Error(fmt::format("--ctx {} exceeds the model's maximum context {}", n_ctx, c.max_seq));
  const PerplexityPlan plan = perplexity_plan(int64_t(tokens.size()), o);
  const int32_t bos = int32_t(model.tokenizer().data().bos_id >= 0 ? model.tokenizer().data().bos_id : c.bos_id);
  if (bos < 0) throw Error("the model has no BOS token, which the perplexity protocol needs");
  const int64_t n_vocab = c.n_vocab;
  const std::vector<int32_t> used(tokens.begin(), tokens.begin() + plan.tokens_used);
  LogprobHeader header{};
  header.n_vocab = uint64_t(n_vocab);
  header.n_ctx = uint64_t(n_ctx);
  header.stride = uint64_t(S);
  header.chunks = uint64_t(plan.chunks);
  header.n_tokens = uint64_t(plan.tokens_used);
  header.n_scored = uint64_t(plan.tokens_scored);
  std::unique_ptr<LogprobReader> ref;
  if (!o.kl_reference.empty()) {
    ref = std::make_unique<LogprobReader>(o.kl_reference);
    const auto& h = ref->header();
    auto mismatch = [&](const std::string& what) {
      return Error(fmt::format("{}: cannot compare: {} (the reference must come from the same text, vocabulary, "
                               "--ctx, --stride and --chunks)", o.kl_reference, what));
    };
    if (h.n_vocab != header.n_vocab)
      throw mismatch(fmt::format("its vocabulary has {} tokens, this model's {}", h.n_vocab, header.n_vocab));
    if (h.n_ctx != header.n_ctx || h.stride != header.stride)
      throw mismatch(fmt::format("it was saved with --ctx {} --stride {}, this run uses --ctx {} --stride {}", h.n_ctx,
                                 h.stride, header.n_ctx, header.stride));
    if (h.chunks != header.chunks || h.n_scored != header.n_scored)
      throw mismatch(fmt::format("it has {} chunks ({} scored tokens), this run {} ({})", h.chunks, h.n_scored,
                                 header.chunks, header.n_scored));
    if (ref->tokens() != used) {
      size_t i = 0;
      while (ref->tokens()[i] == used[i]) ++i;
      throw mismatch(fmt::format("the token ids differ (first at token {}: {} there, {} here)", i, ref->tokens()[i],
                                 used[i]));
    }
  }
  std::unique_ptr<LogprobWriter> writer;
  if (!o.save_logprobs.empty()) writer = std::make_unique<LogprobWriter>(o.save_logprobs, header, used);
  const bool need_rows = writer || ref;
  std::vector<float> row(need_rows ? size_t(n_vocab) : 0), ref_row(ref ? size_t(n_vocab) : 0);
  Stat nll, ref_nll, kld, dnll, top1, dp;
  std::vector<double> klds, dps;
  auto session = model.new_session(n_ctx);
  std::vector<float> logits;
  std::vector<int32_t> window(static_cast<size_t>(n_ctx));
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t ch = 0; ch < plan.chunks; ++ch) {
    int64_t first;  // logits of positions [first, n_ctx - 1) predict window[first + 1 ..]
    if (S == 0) {
      std::copy(tokens.begin() + ch * n_ctx, tokens.begin() + (ch + 1) * n_ctx, window.begin());
      window[0] = bos;
      first = n_ctx / 2;
    } else {
      window[0] = bos;
      std::copy(tokens.begin() + ch * S, tokens.begin() + ch * S + n_ctx - 1, window.begin() + 1);
      first = ch == 0 ? 0 : n_ctx - 1 - S;
    }
    session->reset();
    const int64_t n_out = n_ctx - first;
    session->eval(window, &logits, n_out);
    for (int64_t i = first; i < n_ctx - 1; ++i) {
      const float* lg = logits.data() + (i - first) * n_vocab;
      const int32_t target = window[size_t(i + 1)];
      const double l = log_softmax(lg, n_vocab, need_rows ? row.data() : nullptr, target);
      nll.add(l);
      if (writer) writer->write_row(row.data());
      if (ref) {
        ref->read_row(ref_row.data());
        double k = 0;
        int64_t am_ref = 0, am = 0;
        for (int64_t v = 0; v < n_vocab; ++v) {
          const double pr = std::exp(double(ref_row[size_t(v)]));
          if (pr > 0) k += pr * (double(ref_row[size_t(v)]) - double(row[size_t(v)]));
          if (ref_row[size_t(v)] > ref_row[size_t(am_ref)]) am_ref = v;
          if (row[size_t(v)] > row[size_t(am)]) am = v;
        }
        kld.add(k);
        klds.push_back(k);
        dnll.add(double(ref_row[size_t(target)]) - double(row[size_t(target)]));
        ref_nll.add(-double(ref_row[size_t(target)]));
        top1.add(am == am_ref ? 1.0 : 0.0);
        const double d = std::exp(double(row[size_t(target)])) - std::exp(double(ref_row[size_t(target)]));
        dp.add(d);
        dps.push_back(d);
      }
    }
    if (o.progress) o.progress(ch + 1, plan.chunks, std::exp(nll.mean()));
  }
  if (writer) writer->commit();
  PerplexityResult r;
  r.n_ctx = n_ctx;
  r.stride = S;
  r.chunks = plan.chunks;
  r.tokens_scored = nll.n;
  r.text_tokens = int64_t(tokens.size());
  r.mean_nll = nll.mean();
  r.nll_stderr = nll.stderr_();
  r.ppl = std::exp(r.mean_nll);
  r.ppl_stderr = r.ppl * r.nll_stderr;
  if (ref) {
    KlResult& k = r.kl;
    r.has_kl = true;
    k.tokens = kld.n;
    k.kld_mean = kld.mean();
    k.kld_stderr = kld.stderr_();
    k.ln_ppl_ratio = dnll.mean();
    k.ln_ppl_ratio_stderr = dnll.stderr_();
    k.ref_ppl = std::exp(ref_nll.mean());
    k.ref_ppl_stderr = k.ref_ppl * ref_nll.stderr_();
    k.ppl_ratio = std::exp(k.ln_ppl_ratio);
    k.top1_agree = top1.mean();
    k.top1_agree_stderr = top1.stderr_();
    k.dp_mean = dp.mean();
    k.dp_stderr = dp.stderr_();
    k.dp_rms = std::sqrt(dp.sum2 / double(std::max<int64_t>(dp.n, 1)));
    std::sort(klds.begin(), klds.end());
    std::sort(dps.begin(), dps.end());
    for (double pct : {0.0, 1.0, 5.0, 10.0, 50.0, 90.0, 99.0, 99.9, 100.0}) k.kld_percentiles.emplace_back(pct, percentile(klds, pct));
    for (double pct : {0.0, 0.1, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0})
      k.dp_percentiles.emplace_back(pct, percentile(dps, pct));
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace kmq

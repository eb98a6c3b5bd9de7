// Mixed-precision planning (mixed.h).
#include "calib/mixed.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

#include "kmq/error.h"

namespace kmq {

namespace {

bool is_matrix(const SourceTensor& t) { return t.shape.size() == 2 && t.shape[1] > 1; }

// The converter's choice for t with every matrix at `bits` (overrides still apply).
TensorChoice choice_at(const SourceTensor& t, const ConvertOptions& o, int bits) {
  ConvertOptions ob = o;
  ob.quant.bits = bits;
  ob.embed_type = ob.output_type = std::to_string(bits);
  ob.plan = nullptr;
  return choose_tensor(t, ob);
}

struct Cand {
  bool fixed = false;       // not a k-means matrix (or forced by an override)
  double bits[5] = {};      // storage bits of the whole tensor at b = 1..4
  double err[5] = {};       // relative weighted error at b
  TensorChoice choice[5];
  double sens = 1.0;
};

// Mean KL(p_ref || p) over all positions of logprob arrays [n, vocab].
double mean_kl(const std::vector<float>& ref, const std::vector<float>& lp, int64_t vocab) {
  const int64_t n = int64_t(ref.size()) / vocab;
  double s = 0;
  for (int64_t t = 0; t < n; ++t) {
    const float* a = ref.data() + t * vocab;
    const float* b = lp.data() + t * vocab;
    double kl = 0;
    for (int64_t i = 0; i < vocab; ++i) kl += std::exp(double(a[i])) * (double(a[i]) - double(b[i]));
    s += kl;
  }
  return s / double(n);
}

}  // namespace

std::map<std::string, TensorChoice> plan_bits(const SourceModel& src, const ConvertOptions& o,
                                              const BitsPlanInputs& in,
                                              const std::function<void(const std::string&)>& log) {
  std::vector<Cand> cands(src.tensors.size());
  double fixed_bits = 0, n_all = 0;
  std::unique_ptr<FloatModel> fm;
  std::vector<float> ref;
  std::vector<int32_t> chunk;
  if (!in.tokens.empty()) {
    if (int64_t(in.tokens.size()) < in.n_ctx) throw Error("--target-bpw: fewer calibration tokens than a chunk");
    fm = std::make_unique<FloatModel>(src, o.threads);
    chunk.assign(in.tokens.begin(), in.tokens.begin() + std::clamp<int64_t>(in.sens_tokens, 2, in.n_ctx));
    fm->run(chunk, nullptr, &ref);
  }
  for (size_t i = 0; i < src.tensors.size(); ++i) {
    const SourceTensor& t = src.tensors[i];
    Cand& c = cands[i];
    const int64_t rows = t.shape[0], cols = t.shape.size() == 2 ? t.shape[1] : 1;
    const double n = double(rows) * double(cols);
    n_all += n;
    if (t.load_quantized) {  // imported as stored (1-Bit Wonder export)
      c.fixed = true;
      fixed_bits += t.load_quantized().bits_per_weight() * n;
      continue;
    }
    const TensorChoice c1 = choice_at(t, o, 1), c4 = choice_at(t, o, 4);
    if (!is_matrix(t) || c1.dtype != DType::kKmq || c4.dtype != DType::kKmq || c1.quant.bits == c4.quant.bits) {
      c.fixed = true;
      if (c1.dtype == DType::kKmq) {  // forced by an override: one quantization, counted as is
        std::vector<float> w = t.load();
        fixed_bits += quantize(w.data(), rows, cols, c1.quant).bits_per_weight() * n;
      } else {
        fixed_bits += 8.0 * double(dtype_size(c1.dtype)) * n;
      }
      continue;
    }
    std::vector<float> w = t.load();
    const float* imp = nullptr;
    if (o.importance) {
      auto it = o.importance->find(t.name);
      if (it != o.importance->end()) imp = it->second.data();
    }
    double ref_e = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) {
        const double x = w[size_t(r * cols + j)];
        ref_e += (imp ? imp[j] : 1.0) * x * x;
      }
    std::vector<float> deq;
    for (int b = 1; b <= 4; ++b) {
      c.choice[b] = choice_at(t, o, b);
      c.choice[b].quant.importance = imp;
      const QuantizedTensor q = quantize(w.data(), rows, cols, c.choice[b].quant);
      c.bits[b] = q.bits_per_weight() * n;
      deq.resize(size_t(rows * cols));
      for (int64_t r = 0; r < rows; ++r) dequantize_row(q, r, deq.data() + r * cols);
      double e = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
          const double d = double(w[size_t(r * cols + j)]) - double(deq[size_t(r * cols + j)]);
          e += (imp ? imp[j] : 1.0) * d * d;
        }
      c.err[b] = ref_e > 0 ? e / ref_e : 0;
      if (fm && b == 2) {  // measured sensitivity: this tensor alone at 2 bits
        std::vector<float> lp;
        fm->set_weight(t.name, deq);
        fm->run(chunk, nullptr, &lp);
        fm->set_weight(t.name, {});
        const double kl = mean_kl(ref, lp, src.config.n_vocab);
        c.sens = c.err[2] > 0 ? std::max(kl, 0.0) / c.err[2] : 0;
      }
    }
  }
  const double budget = in.target_bpw * n_all;
  std::vector<int> bits(cands.size(), 1);
  double total = fixed_bits;
  for (const Cand& c : cands)
    if (!c.fixed) total += c.bits[1];
  if (total > budget)
    throw Error(fmt::format("--target-bpw {}: even 1 bit everywhere needs {:.4f} bits/weight", in.target_bpw,
                            total / n_all));
  for (;;) {  // greedy: best loss reduction per added bit that still fits
    int best = -1;
    double best_gain = -1;
    for (size_t i = 0; i < cands.size(); ++i) {
      const Cand& c = cands[i];
      const int b = bits[i];
      if (c.fixed || b >= 4) continue;
      const double db = c.bits[b + 1] - c.bits[b];
      if (total + db > budget) continue;
      const double gain = c.sens * (c.err[b] - c.err[b + 1]) / std::max(db, 1.0);
      if (gain > best_gain) best_gain = gain, best = int(i);
    }
    if (best < 0) break;
    total += cands[size_t(best)].bits[bits[size_t(best)] + 1] - cands[size_t(best)].bits[bits[size_t(best)]];
    ++bits[size_t(best)];
  }
  std::map<std::string, TensorChoice> plan;
  if (log)
    log(fmt::format("  mixed precision, target {:.4f} bits/weight{}:", in.target_bpw,
                    fm ? fmt::format(" (sensitivity: KL on {} calibration tokens)", chunk.size()) : " (no calibration: sensitivity 1)"));
  double model_loss = 0;
  for (size_t i = 0; i < cands.size(); ++i) {
    const Cand& c = cands[i];
    if (c.fixed) continue;
    const int b = bits[i];
    plan[src.tensors[i].name] = c.choice[b];
    plan[src.tensors[i].name].quant.importance = nullptr;  // convert_model sets it again
    model_loss += c.sens * c.err[b];
    if (log)
      log(fmt::format("    {:<22} {} bits  err(1..4) {:.2e} {:.2e} {:.2e} {:.2e}  sensitivity {:.3e}",
                      src.tensors[i].name, b, c.err[1], c.err[2], c.err[3], c.err[4], c.sens));
  }
  if (log)
    log(fmt::format("  mixed precision: {:.4f} bits/weight over {} weights (modelled loss {:.4f})", total / n_all,
                    int64_t(n_all), model_loss));
  return plan;
}

}  // namespace kmq

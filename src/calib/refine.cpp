// Output-aligned refinement (refine.h): the layer-by-layer driver around quantize_hessian().
#include "calib/refine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fmt/format.h>

#include "calib/calibrate.h"
#include "kmq/error.h"
#include "util/thread_pool.h"

namespace kmq {

namespace {

using Point = FloatModel::Point;

// out[a][b] = sum_t x[t][a] * y[t][b] for x [T, na], y [T, nb] (row-major), out [na, nb]
// in double. Blocks of 16 rows of out per task: each task streams x and y once.
void gram(ThreadPool& pool, const float* x, int64_t na, const float* y, int64_t nb, int64_t T, double* out) {
  constexpr int64_t kB = 16;
  const int64_t tasks = (na + kB - 1) / kB;
  pool.run(tasks, [&](int64_t task, int) {
    const int64_t a0 = task * kB, a1 = std::min(na, a0 + kB);
    double* o = out + a0 * nb;
    std::fill(o, o + (a1 - a0) * nb, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const float* yt = y + t * nb;
      for (int64_t a = a0; a < a1; ++a) {
        const double xa = x[t * na + a];
        if (xa == 0) continue;
        double* oa = out + a * nb;
        for (int64_t b = 0; b < nb; ++b) oa[b] += xa * double(yt[b]);
      }
    }
  });
}

// y[t][r] = sum_j x[t][j] * w[r][j]: x [T, cols], w [rows, cols], y [T, rows].
void matmul_t(ThreadPool& pool, const float* x, int64_t T, const float* w, int64_t rows, int64_t cols, float* y) {
  pool.run(T, [&](int64_t t, int) {
    const float* xt = x + t * cols;
    for (int64_t r = 0; r < rows; ++r) {
      const float* wr = w + r * cols;
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t j = 0;
      for (; j + 4 <= cols; j += 4) {
        s0 += double(xt[j]) * wr[j];
        s1 += double(xt[j + 1]) * wr[j + 1];
        s2 += double(xt[j + 2]) * wr[j + 2];
        s3 += double(xt[j + 3]) * wr[j + 3];
      }
      for (; j < cols; ++j) s0 += double(xt[j]) * wr[j];
      y[t * rows + r] = float((s0 + s1) + (s2 + s3));
    }
  });
}

std::vector<float> dequantize(const QuantizedTensor& q) {
  std::vector<float> v(static_cast<size_t>(q.rows * q.cols));
  for (int64_t r = 0; r < q.rows; ++r) dequantize_row(q, r, v.data() + r * q.cols);
  return v;
}

}  // namespace

std::map<std::string, QuantizedTensor> refine_quantize(const SourceModel& src, const ConvertOptions& o,
                                                       const std::vector<int32_t>& tokens, int64_t n_ctx,
                                                       const RefineOptions& ro,
                                                       const std::function<void(const std::string&)>& log_fn) {
  auto log = [&](const std::string& line) {
    if (log_fn) log_fn(line);
  };
  const auto t_start = std::chrono::steady_clock::now();
  if (n_ctx < 2 || tokens.size() < size_t(n_ctx))
    throw Error(fmt::format("refine: needs at least one chunk of {} calibration tokens, got {}", n_ctx, tokens.size()));
  if (o.float_only) throw Error("refine: nothing to refine in a float-only conversion");
  const ModelConfig& c = src.config;
  std::map<std::string, const SourceTensor*> by_name;
  for (const auto& t : src.tensors) by_name[t.name] = &t;
  auto choice = [&](const std::string& name) {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw Error(fmt::format("refine: the model has no tensor '{}'", name));
    TensorChoice ch = choose_tensor(*it->second, o);
    if (o.plan) {
      auto p = o.plan->find(name);
      if (p != o.plan->end()) ch = p->second;
    }
    ch.quant.threads = ro.threads;
    return ch;
  };
  auto check_cancel = [&]() {
    if (ro.cancel && ro.cancel->load()) throw Error("conversion cancelled; no output written");
  };

  ThreadPool pool(ro.threads);
  FloatModel fm(src, ro.threads), qm(src, ro.threads);
  std::map<std::string, QuantizedTensor> out;

  // The embedding first: every later input depends on it.
  {
    const std::string name = "token_embd";
    TensorChoice ch = choice(name);
    if (ch.dtype == DType::kKmq && by_name.at(name)->load_quantized == nullptr) {
      const auto& w = qm.source_weight(name);
      if (o.importance) {
        auto it = o.importance->find(name);
        if (it != o.importance->end()) ch.quant.importance = it->second.data();
      }
      const SourceTensor& st = *by_name.at(name);
      QuantizedTensor q = quantize(w.data(), st.shape[0], st.shape[1], ch.quant);
      qm.set_weight(name, dequantize(q));
      log(fmt::format("  refine: {} q{} plain fit (nmse {:.3e}), in the loop from the start", name, q.bits,
                      quant_error(w.data(), q).nmse));
      out.emplace(name, std::move(q));
    }
  }
  const int64_t n_chunks = int64_t(tokens.size()) / n_ctx, T = n_chunks * n_ctx;
  for (int64_t k = 0; k < n_chunks; ++k) {
    std::vector<int32_t> chunk(tokens.begin() + k * n_ctx, tokens.begin() + (k + 1) * n_ctx);
    fm.begin(chunk);
    qm.begin(chunk);
  }

  // One stage: the matrices `names` sharing one input; xf / xq: [T, cols].
  auto stage = [&](const std::vector<std::string>& names, const std::vector<float>& xf, const std::vector<float>& xq,
                   int64_t cols, const HessianOptions& hopt) {
    const double damp = hopt.damp;
    std::vector<double> h(static_cast<size_t>(cols * cols));
    gram(pool, xq.data(), cols, xq.data(), cols, T, h.data());
    double mean_diag = 0;
    for (int64_t j = 0; j < cols; ++j) mean_diag += h[size_t(j * cols + j)];
    mean_diag /= double(cols);
    const double lambda = damp * (mean_diag > 0 ? mean_diag : 1.0) + (mean_diag > 0 ? 0.0 : 1.0);
    std::vector<double> chol;
    for (const auto& name : names) {
      check_cancel();
      TensorChoice ch = choice(name);
      const SourceTensor& st = *by_name.at(name);
      if (ch.dtype != DType::kKmq || st.load_quantized) continue;  // float or imported: not fitted here
      const auto& w = fm.source_weight(name);
      const int64_t rows = st.shape[0];
      if (st.shape[1] != cols) throw Error(fmt::format("refine: '{}' has {} columns, its input {}", name, st.shape[1], cols));
      std::vector<float> target = w;
      if (ro.float_target) {
        // t_r = (H + lambda I)^-1 (X_q^T X_f w_r + lambda w_r)
        if (chol.empty()) {
          chol = h;
          for (int64_t j = 0; j < cols; ++j) chol[size_t(j * cols + j)] += lambda;
          if (!cholesky_lower(chol, cols)) throw Error(fmt::format("refine: the inputs of '{}' give a singular H", name));
        }
        std::vector<float> yf(static_cast<size_t>(T * rows));
        matmul_t(pool, xf.data(), T, w.data(), rows, cols, yf.data());
        std::vector<double> b(static_cast<size_t>(cols * rows));  // [cols, rows]
        gram(pool, xq.data(), cols, yf.data(), rows, T, b.data());
        pool.run(rows, [&](int64_t r, int) {
          std::vector<double> v(static_cast<size_t>(cols));
          for (int64_t j = 0; j < cols; ++j) v[size_t(j)] = b[size_t(j * rows + r)] + lambda * double(w[size_t(r * cols + j)]);
          for (int64_t i = 0; i < cols; ++i) {
            const double* li = chol.data() + i * cols;
            double s = v[size_t(i)];
            for (int64_t k = 0; k < i; ++k) s -= li[k] * v[size_t(k)];
            v[size_t(i)] = s / li[i];
          }
          for (int64_t i = cols - 1; i >= 0; --i) {
            double s = v[size_t(i)];
            for (int64_t k = i + 1; k < cols; ++k) s -= chol[size_t(k * cols + i)] * v[size_t(k)];
            v[size_t(i)] = s / chol[size_t(i * cols + i)];
          }
          for (int64_t j = 0; j < cols; ++j) target[size_t(r * cols + j)] = float(v[size_t(j)]);
        });
      }
      HessianReport rep;
      const auto t0 = std::chrono::steady_clock::now();
      QuantizedTensor q = quantize_hessian(target.data(), rows, cols, h.data(), ch.quant, hopt, &rep);
      qm.set_weight(name, dequantize(q));
      const double ref = rep.err_ref > 0 ? rep.err_ref : 1.0;
      log(fmt::format("  refine: {:<18} q{} output error {:.3e} -> {:.3e} ({:+.1f}%)  {:.1f} s", name, q.bits,
                      rep.err_plain / ref, rep.err_final / ref, 100.0 * (rep.err_final / rep.err_plain - 1.0),
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
      out.insert_or_assign(name, std::move(q));
    }
  };

  const int64_t q_dim = c.n_heads * c.head_dim;
  struct StageDef {
    Point point;
    int64_t width;
    std::vector<const char*> names;
  };
  const std::vector<StageDef> stages = {{Point::kAttnIn, c.dim, {"attn_q", "attn_k", "attn_v"}},
                                        {Point::kAttnOutput, q_dim, {"attn_output"}},
                                        {Point::kFfnIn, c.dim, {"ffn_gate", "ffn_up"}},
                                        {Point::kFfnDown, c.ffn_dim, {"ffn_down"}}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const auto tl = std::chrono::steady_clock::now();
    std::vector<std::vector<float>> xf(stages.size());
    for (int64_t k = 0; k < n_chunks; ++k)
      for (size_t s = 0; s < stages.size(); ++s) fm.run_layer(k, l, stages[s].point, &xf[s], s + 1 == stages.size());
    for (size_t s = 0; s < stages.size(); ++s) {
      std::vector<float> xq;
      for (int64_t k = 0; k < n_chunks; ++k) qm.run_layer(k, l, stages[s].point, &xq, false);
      std::vector<std::string> names;
      for (const char* n : stages[s].names) names.push_back(fmt::format("blk.{}.{}", l, n));
      stage(names, xf[s], xq, stages[s].width, ro.hessian);
    }
    for (int64_t k = 0; k < n_chunks; ++k) qm.run_layer(k, l, Point::kNone, nullptr, true);
    log(fmt::format("  refine: layer {} of {} done in {:.1f} s", l + 1, c.n_layers,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - tl).count()));
  }
  const bool untied = !c.tied_embeddings && by_name.count("output");
  if (untied || (c.tied_embeddings && ro.embed_damp > 0 && out.count("token_embd"))) {
    std::vector<float> xf, xq;
    for (int64_t k = 0; k < n_chunks; ++k) {
      fm.final_input(k, &xf);
      qm.final_input(k, &xq);
    }
    HessianOptions hopt = ro.hessian;
    if (!untied) hopt.damp = ro.embed_damp;
    stage({untied ? "output" : "token_embd"}, xf, xq, c.dim, hopt);
  }
  log(fmt::format("  refine: {} tensors fitted on {} tokens ({} chunks) in {:.1f} s", out.size(), T, n_chunks,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()));
  return out;
}

}  // namespace kmq

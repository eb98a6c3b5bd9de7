// k-means quantization of a weight matrix (kmq/quant.h): block scales, codebook fitting
// per scope, nearest-level assignment and packing; and the reference reconstruction.
//
// Order of work, per the format's reconstruction w ~ codebook[idx] * scale:
//   1. scales per block of a row (absmax / absmean), rounded to their storage dtype first,
//      so the fit sees exactly the scales the kernels will multiply by;
//   2. the weights divided by their rounded scale are pooled per codebook and fitted with
//      kmeans_1d (importance[col] as weights), centroids rounded to the codebook dtype;
//   3. each weight takes the index of the nearest stored level fl(c * s) (ties: lower).
// Threads take whole rows; every result depends only on its row (or, for the tensor
// codebook, on a serial fit), so the output is bit-identical for any thread count.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>

#include "kmq/error.h"
#include "kmq/quant.h"
#include "quant/kmeans.h"
#include "quant/quant_internal.h"
#include "util/half.h"

namespace kmq {
namespace {

using namespace qdetail;


void validate(const float* w, int64_t rows, int64_t cols, const QuantSpec& s) {
  auto fail = [](const std::string& m) { throw Error("quantize: " + m); };
  if (!w) fail("null weights");
  if (rows <= 0 || cols <= 0) fail(fmt::format("bad shape {} x {}", rows, cols));
  if (rows > std::numeric_limits<int64_t>::max() / 8 / cols) fail("shape too large");
  if (s.bits < 1 || s.bits > 4) fail(fmt::format("bits = {} not in 1..4", s.bits));
  if (s.scope != CodebookScope::kTensor && s.scope != CodebookScope::kRow &&
      s.scope != CodebookScope::kGroup)
    fail(fmt::format("unknown codebook scope {}", int(s.scope)));
  if (s.scope == CodebookScope::kGroup && s.group_size < 1)
    fail(fmt::format("group_size = {} must be >= 1", s.group_size));
  if (s.scale_block < 0) fail(fmt::format("scale_block = {} must be >= 0", s.scale_block));
  if (s.scale_block > 0 && s.scale_mode != ScaleMode::kAbsMax &&
      s.scale_mode != ScaleMode::kAbsMean)
    fail(fmt::format("scale_mode '{}' needs scale_block = 0", scale_mode_name(s.scale_mode)));
  if (s.codebook_dtype != DType::kF32 && s.codebook_dtype != DType::kF16)
    fail(fmt::format("codebook dtype '{}' not f32 or f16", dtype_name(s.codebook_dtype)));
  if (s.scale_dtype != DType::kF16 && s.scale_dtype != DType::kBF16)
    fail(fmt::format("scale dtype '{}' not f16 or bf16", dtype_name(s.scale_dtype)));
  if (s.exact_max < 0) fail("exact_max must be >= 0");
  if (s.lloyd_iters < 0) fail("lloyd_iters must be >= 0");
  if (s.threads < 1) fail(fmt::format("threads = {} must be >= 1", s.threads));
  if (s.ls_iters < 0) fail(fmt::format("ls_iters = {} must be >= 0", s.ls_iters));
  for (int64_t i = 0; i < rows * cols; ++i)
    if (!std::isfinite(w[i]))
      fail(fmt::format("weight [{}, {}] is not finite", i / cols, i % cols));
  if (s.importance)
    for (int64_t j = 0; j < cols; ++j)
      if (!std::isfinite(s.importance[j]) || s.importance[j] < 0)
        fail(fmt::format("importance[{}] is negative or not finite", j));
}

struct Worker {
  std::vector<float> vals, wts;
  std::vector<uint8_t> idx;
  detail::KMeansScratch km;
};

// Scales of one row, rounded to their dtype, into sc[n_sb].
void row_scales(const Layout& L, const QuantSpec& spec, const float* wr, float* sc) {
  for (int64_t b = 0; b < L.n_sb; ++b) {
    const int64_t j0 = b * L.sb, j1 = std::min(L.cols, j0 + L.sb);
    double v = 0;
    if (spec.scale_mode == ScaleMode::kAbsMax) {
      float m = 0;
      for (int64_t j = j0; j < j1; ++j) m = std::max(m, std::fabs(wr[j]));
      v = m;
    } else {
      for (int64_t j = j0; j < j1; ++j) v += std::fabs(double(wr[j]));
      v /= double(j1 - j0);
    }
    sc[b] = round_scale(spec.scale_dtype, v);
  }
}

// The fitting pool of columns [c0, c1) of a row: w / scale, leaving out zero-scale
// (all-zero) blocks, which every index reconstructs exactly and so must not pull a
// centroid towards 0. wts gets importance[col] when imp is given. Returns the count.
int64_t gather(const Layout& L, const float* wr, const float* sc, const float* imp, int64_t c0,
               int64_t c1, float* vals, float* wts) {
  int64_t n = 0;
  for (int64_t j0 = c0; j0 < c1;) {
    int64_t j1 = c1;
    float s = 1.0f;
    if (L.sb) {
      j1 = std::min(c1, (j0 / L.sb + 1) * L.sb);
      s = sc[j0 / L.sb];
    }
    if (s != 0) {
      for (int64_t j = j0; j < j1; ++j, ++n) {
        vals[n] = L.sb ? wr[j] / s : wr[j];
        if (imp) wts[n] = imp[j];
      }
    }
    j0 = j1;
  }
  return n;
}

// Index of the nearest stored level fl(c * s) for every weight of row r. Over each run of
// columns sharing one codebook and one scale the levels are sorted (s >= 0), so the
// nearest is found by comparing with the midpoints, which are exact in double.
void assign_row(const Layout& L, const std::vector<float>& cbs, int64_t r, const float* wr,
                const float* sc, uint8_t* idx) {
  float lv[kMaxLevels];
  double th[kMaxLevels];
  for (int64_t j0 = 0; j0 < L.cols;) {
    int64_t j1 =
        L.scope == CodebookScope::kGroup ? std::min(L.cols, (j0 / L.group + 1) * L.group) : L.cols;
    const float* cb = L.cb_of(cbs, r, j0);
    if (L.sb) {
      j1 = std::min(j1, (j0 / L.sb + 1) * L.sb);
      const float s = sc[j0 / L.sb];
      for (int i = 0; i < L.k; ++i) lv[i] = cb[i] * s;
    } else {
      for (int i = 0; i < L.k; ++i) lv[i] = cb[i];
    }
    for (int i = 0; i + 1 < L.k; ++i) th[i] = 0.5 * (double(lv[i]) + double(lv[i + 1]));
    for (int64_t j = j0; j < j1; ++j) idx[j] = uint8_t(detail::bucket_of(th, L.k, wr[j]));
    j0 = j1;
  }
}

// Alternating least squares on the (importance-)weighted reconstruction error, given an
// initial fit: each pass sets every block scale to argmin_s sum imp (w - c[idx] s)^2, then
// every centroid to argmin_c sum imp (w - c s)^2 over its members, each rounded to its
// storage dtype, and reassigns the nearest stored levels after each half-step. Partial sums
// are per row and reduced in row order, so the result is the same for any thread count.
void ls_refine(QuantizedTensor& q, const float* w, const Layout& L, const QuantSpec& spec,
               int threads) {
  const float* imp = spec.importance;
  const int64_t rows = L.rows, cols = L.cols, k = L.k;
  const int64_t cb_per_row = L.scope == CodebookScope::kGroup ? L.n_groups : 1;
  std::vector<uint8_t> idx(size_t(rows * cols));
  auto reassign = [&]() {
    parallel_for(threads, rows, [&](int64_t r, int) {
      assign_row(L, q.codebooks, r, w + r * cols, q.scales.data() + r * L.n_sb, idx.data() + r * cols);
    });
  };
  reassign();
  std::vector<double> num(size_t(rows * cb_per_row * k)), den(num.size());
  for (int it = 0; it < spec.ls_iters; ++it) {
    if (L.sb) {
      parallel_for(threads, rows, [&](int64_t r, int) {
        const float* wr = w + r * cols;
        const uint8_t* ir = idx.data() + r * cols;
        float* sc = q.scales.data() + r * L.n_sb;
        for (int64_t b = 0; b < L.n_sb; ++b) {
          if (sc[b] == 0) continue;  // an all-zero block
          const int64_t j0 = b * L.sb, j1 = std::min(cols, j0 + L.sb);
          double n = 0, d = 0;
          for (int64_t j = j0; j < j1; ++j) {
            const double c = L.cb_of(q.codebooks, r, j)[ir[j]], iw = imp ? imp[j] : 1.0;
            n += iw * c * double(wr[j]);
            d += iw * c * c;
          }
          if (d > 0 && n > 0) sc[b] = round_scale(spec.scale_dtype, n / d);
        }
      });
      reassign();
    }
    std::fill(num.begin(), num.end(), 0.0);
    std::fill(den.begin(), den.end(), 0.0);
    parallel_for(threads, rows, [&](int64_t r, int) {
      const float* wr = w + r * cols;
      const uint8_t* ir = idx.data() + r * cols;
      const float* sc = q.scales.data() + r * L.n_sb;
      for (int64_t j = 0; j < cols; ++j) {
        const double s = L.sb ? double(sc[j / L.sb]) : 1.0, iw = imp ? imp[j] : 1.0;
        const int64_t g = L.scope == CodebookScope::kGroup ? j / L.group : 0;
        const size_t p = size_t((r * cb_per_row + g) * k + ir[j]);
        num[p] += iw * s * double(wr[j]);
        den[p] += iw * s * s;
      }
    });
    const int64_t n_cb = q.n_codebooks();
    for (int64_t c = 0; c < n_cb; ++c) {
      float* cb = q.codebooks.data() + c * k;
      for (int64_t i = 0; i < k; ++i) {
        double n = 0, d = 0;
        if (L.scope == CodebookScope::kTensor) {
          for (int64_t r = 0; r < rows; ++r) n += num[size_t(r * k + i)], d += den[size_t(r * k + i)];
        } else {
          n = num[size_t(c * k + i)], d = den[size_t(c * k + i)];
        }
        if (d > 0) cb[i] = float(n / d);  // an empty cluster keeps its centroid
      }
      finish_codebook(spec.codebook_dtype, cb, int(k));
    }
    reassign();
  }
  parallel_for(threads, rows, [&](int64_t r, int) {
    pack_indices(idx.data() + r * cols, cols, spec.bits, q.indices.data() + r * q.row_bytes());
  });
}

}  // namespace

int64_t QuantizedTensor::n_codebooks() const {
  switch (scope) {
    case CodebookScope::kTensor:
      return 1;
    case CodebookScope::kRow:
      return rows;
    case CodebookScope::kGroup:
      return group_size > 0 ? rows * ((cols + group_size - 1) / group_size) : 0;
  }
  return 0;
}

double QuantizedTensor::bits_per_weight() const {
  const double n = double(rows) * double(cols);
  if (n <= 0) return 0.0;
  const double index_bits = 8.0 * double(rows) * double(row_bytes());  // row padding included
  const double codebook_bits =
      double(n_codebooks()) * double(int64_t(1) << bits) * 8.0 * double(dtype_size(codebook_dtype));
  const double scale_bits =
      double(rows) * double(n_scale_blocks()) * 8.0 * double(dtype_size(scale_dtype));
  return (index_bits + codebook_bits + scale_bits) / n;
}

QuantizedTensor quantize(const float* w, int64_t rows, int64_t cols, const QuantSpec& spec) {
  validate(w, rows, cols, spec);
  QuantizedTensor q;
  q.bits = spec.bits;
  q.scope = spec.scope;
  // A group or scale block longer than the row means the whole row: store it as cols
  // (same reconstruction; the reader requires both <= cols).
  q.group_size = spec.scope == CodebookScope::kGroup ? std::min(spec.group_size, cols) : 0;
  q.scale_block = std::min(spec.scale_block, cols);
  q.rows = rows;
  q.cols = cols;
  q.codebook_dtype = spec.codebook_dtype;
  q.scale_dtype = spec.scale_dtype;

  Layout L{rows, cols, 1 << spec.bits, spec.scope, cols, 1, q.scale_block, q.n_scale_blocks()};
  if (spec.scope == CodebookScope::kGroup) {
    L.group = q.group_size;
    L.n_groups = (cols + L.group - 1) / L.group;
  }
  q.indices.assign(size_t(rows * q.row_bytes()), 0);
  q.codebooks.assign(size_t(q.n_codebooks() * L.k), 0.0f);
  q.scales.assign(size_t(rows * L.n_sb), 0.0f);
  const int threads = int(std::min<int64_t>(spec.threads, rows));
  std::vector<Worker> workers(threads);
  const float* imp = spec.importance;

  auto assign_and_pack = [&](int64_t r, Worker& wk) {
    wk.idx.resize(cols);
    assign_row(L, q.codebooks, r, w + r * cols, q.scales.data() + r * L.n_sb, wk.idx.data());
    pack_indices(wk.idx.data(), cols, spec.bits, q.indices.data() + r * q.row_bytes());
  };

  if (spec.scope == CodebookScope::kTensor) {
    // One pool of every row (row-major order, fixed), fitted serially.
    std::vector<float> vals(size_t(rows * cols)), wts(imp ? size_t(rows * cols) : 0);
    std::vector<int64_t> count(rows);
    parallel_for(threads, rows, [&](int64_t r, int) {
      const float* wr = w + r * cols;
      float* sc = q.scales.data() + r * L.n_sb;
      row_scales(L, spec, wr, sc);
      count[r] = gather(L, wr, sc, imp, 0, cols, vals.data() + r * cols,
                        imp ? wts.data() + r * cols : nullptr);
    });
    int64_t n = 0;  // close the gaps left by zero blocks
    for (int64_t r = 0; r < rows; ++r) {
      if (n != r * cols) {
        std::copy_n(vals.begin() + r * cols, count[r], vals.begin() + n);
        if (imp) std::copy_n(wts.begin() + r * cols, count[r], wts.begin() + n);
      }
      n += count[r];
    }
    detail::kmeans_1d_into(vals.data(), imp ? wts.data() : nullptr, n, L.k, spec.exact_max,
                           spec.lloyd_iters, workers[0].km, q.codebooks.data());
    finish_codebook(spec.codebook_dtype, q.codebooks.data(), L.k);
    vals = {};
    wts = {};
    workers[0].km = {};
    parallel_for(threads, rows, [&](int64_t r, int t) { assign_and_pack(r, workers[t]); });
  } else {
    parallel_for(threads, rows, [&](int64_t r, int t) {
      Worker& wk = workers[t];
      const float* wr = w + r * cols;
      float* sc = q.scales.data() + r * L.n_sb;
      row_scales(L, spec, wr, sc);
      wk.vals.resize(L.group);
      if (imp) wk.wts.resize(L.group);
      for (int64_t g = 0; g < L.n_groups; ++g) {
        const int64_t c0 = g * L.group, c1 = std::min(cols, c0 + L.group);
        const int64_t n = gather(L, wr, sc, imp, c0, c1, wk.vals.data(), wk.wts.data());
        float* cb = q.codebooks.data() + (r * L.n_groups + g) * L.k;
        detail::kmeans_1d_into(wk.vals.data(), imp ? wk.wts.data() : nullptr, n, L.k,
                               spec.exact_max, spec.lloyd_iters, wk.km, cb);
        finish_codebook(spec.codebook_dtype, cb, L.k);
      }
      assign_and_pack(r, wk);
    });
  }
  if (spec.ls_iters > 0) ls_refine(q, w, L, spec, threads);
  return q;
}

void dequantize_row(const QuantizedTensor& q, int64_t r, float* out) {
  if (r < 0 || r >= q.rows) throw Error(fmt::format("dequantize_row: row {} of {}", r, q.rows));
  if (q.bits < 1 || q.bits > 4 || (q.scope == CodebookScope::kGroup && q.group_size < 1) ||
      q.scale_block < 0 || int64_t(q.indices.size()) != q.rows * q.row_bytes() ||
      int64_t(q.codebooks.size()) != q.n_codebooks() * (int64_t(1) << q.bits) ||
      int64_t(q.scales.size()) != q.rows * q.n_scale_blocks())
    throw Error("dequantize_row: inconsistent quantized tensor");
  const int64_t k = int64_t(1) << q.bits;
  const int64_t n_groups =
      q.scope == CodebookScope::kGroup ? (q.cols + q.group_size - 1) / q.group_size : 1;
  const int64_t n_sb = q.n_scale_blocks();
  const uint8_t* row = q.indices.data() + r * q.row_bytes();
  for (int64_t j = 0; j < q.cols; ++j) {
    const int64_t c = q.scope == CodebookScope::kTensor ? 0
                      : q.scope == CodebookScope::kRow  ? r
                                                        : r * n_groups + j / q.group_size;
    float v = q.codebooks[size_t(c * k + unpack_index(row, j, q.bits))];
    if (q.scale_block) v *= q.scales[size_t(r * n_sb + j / q.scale_block)];
    out[j] = v;
  }
}

QuantStats quant_error(const float* w, const QuantizedTensor& q) {
  std::vector<float> row(size_t(q.cols));
  double se = 0, ss = 0;
  for (int64_t r = 0; r < q.rows; ++r) {
    dequantize_row(q, r, row.data());
    for (int64_t j = 0; j < q.cols; ++j) {
      const double x = w[r * q.cols + j], d = x - double(row[j]);
      se += d * d;
      ss += x * x;
    }
  }
  QuantStats st;
  const double n = double(q.rows) * double(q.cols);
  if (n <= 0) return st;
  st.mse = se / n;
  st.nmse = ss > 0 ? se / ss : (se > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  return st;
}

}  // namespace kmq

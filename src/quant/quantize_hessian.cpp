// Output-aware quantization of one matrix (kmq/quant.h, quantize_hessian): GPTQ's
// sequential assignment with error feedback, generalised to k-means codebooks with block
// scales, alternated with exact least-squares refits of the scales and centroids in the
// metric of the layer's input second moments H.
//
// The objective, per row r with target t and reconstruction w' (Hd = H + damp*mean(diag)*I):
//   E_r = (w' - t)^T Hd (w' - t)
// - Indices (GPTQ, Frantar et al. 2022): columns in order; column j takes the nearest stored
//   level of its running value v_j, and its error (v_j - q_j) / U_jj, times row j of U, is
//   subtracted from the later columns, U being the upper Cholesky factor of Hd^-1 (Hd^-1 =
//   U^T U). This is optimal error feedback for a fixed order and grid; rows are independent.
//   U is computed as the inverse of the "upper-lower" factor of Hd (Hd = U' U'^T, U' upper,
//   then U = U'^-1), which is the ordinary Cholesky factor of Hd with rows and columns
//   reversed: one factorisation and one triangular inverse, no explicit Hd^-1.
// - Scales of row r (w'_j = s_b(j) u_j, u_j = centroid of j): the normal equations
//   A s = rhs with A_bb' = sum_{j in b, j' in b'} u_j Hd_jj' u_j', rhs_b = sum_{j in b} u_j (Hd t)_j.
// - Centroids (w'_j = a_j c_m(j), a_j = scale of j, m(j) = codebook slot of j): M c = rhs
//   with M_mm' = sum a_j Hd_jj' a_j' over j in m, j' in m', summed over rows for a tensor
//   codebook (in row order) or solved per row for row and group codebooks.
// Every solve has a tiny ridge towards the current values (empty clusters, all-zero blocks
// keep theirs). Results are rounded to their storage dtypes and codebooks re-sorted with
// the indices remapped, so the state is always a valid .kmq tensor; its E is measured after
// every step and the best state is returned.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kmq/error.h"
#include "kmq/quant.h"
#include "quant/quant_internal.h"

namespace kmq {
namespace {

using namespace qdetail;

// Solves the small SPD system (A + mu I) x = b + mu x0 in place of x (x holds x0 on entry),
// mu a relative ridge. Returns false (x unchanged) if the system is not usable.
bool solve_ridge(std::vector<double> a, std::vector<double> b, int64_t n, double* x) {
  double tr = 0;
  for (int64_t i = 0; i < n; ++i) tr += a[size_t(i * n + i)];
  const double mu = (tr > 0 ? tr / double(n) : 1.0) * 1e-9 + 1e-30;
  for (int64_t i = 0; i < n; ++i) {
    a[size_t(i * n + i)] += mu;
    b[size_t(i)] += mu * x[i];
  }
  if (!cholesky_lower(a, n)) return false;
  for (int64_t i = 0; i < n; ++i) {  // L y = b
    double s = b[size_t(i)];
    for (int64_t k = 0; k < i; ++k) s -= a[size_t(i * n + k)] * b[size_t(k)];
    b[size_t(i)] = s / a[size_t(i * n + i)];
  }
  for (int64_t i = n - 1; i >= 0; --i) {  // L^T x = y
    double s = b[size_t(i)];
    for (int64_t k = i + 1; k < n; ++k) s -= a[size_t(k * n + i)] * b[size_t(k)];
    b[size_t(i)] = s / a[size_t(i * n + i)];
  }
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(b[size_t(i)])) return false;
  std::copy(b.begin(), b.end(), x);
  return true;
}

struct State {
  std::vector<uint8_t> idx;  // rows * cols
  std::vector<float> codebooks, scales;
  double err = 0;
};

struct Problem {
  Layout L;
  const QuantSpec* spec;
  const float* t;
  std::vector<double> hd;  // cols x cols, damped
  std::vector<double> ht;  // rows x cols: Hd t_r
  int threads;
  int64_t slots_per_row() const { return L.scope == CodebookScope::kGroup ? L.n_groups * L.k : L.k; }
  int64_t slot(int64_t j, uint8_t i) const {
    return (L.scope == CodebookScope::kGroup ? (j / L.group) * L.k : 0) + i;
  }
  float scale(const State& s, int64_t r, int64_t j) const {
    return L.sb ? s.scales[size_t(r * L.n_sb + j / L.sb)] : 1.0f;
  }
  // Reconstructed row r into out[cols].
  void row(const State& s, int64_t r, double* out) const {
    for (int64_t j = 0; j < L.cols; ++j)
      out[j] = double(L.cb_of(s.codebooks, r, j)[s.idx[size_t(r * L.cols + j)]] * scale(s, r, j));
  }
};

double objective(const Problem& P, State& s) {
  const int64_t rows = P.L.rows, cols = P.L.cols;
  std::vector<double> per_row(static_cast<size_t>(rows));
  parallel_for(P.threads, rows, [&](int64_t r, int) {
    std::vector<double> e(static_cast<size_t>(cols));
    P.row(s, r, e.data());
    const float* tr = P.t + r * cols;
    for (int64_t j = 0; j < cols; ++j) e[size_t(j)] -= double(tr[j]);
    double acc = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double* h = P.hd.data() + j * cols;
      double d = 0;
      for (int64_t k = 0; k < cols; ++k) d += h[k] * e[size_t(k)];
      acc += e[size_t(j)] * d;
    }
    per_row[size_t(r)] = acc;
  });
  s.err = 0;
  for (double v : per_row) s.err += v;
  return s.err;
}

// GPTQ assignment of every row with the current scales and codebooks.
void assign_gptq(const Problem& P, const std::vector<double>& u, State& s) {
  const int64_t cols = P.L.cols;
  parallel_for(P.threads, P.L.rows, [&](int64_t r, int) {
    std::vector<double> w(P.t + r * cols, P.t + (r + 1) * cols);
    uint8_t* ir = s.idx.data() + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const float* cb = P.L.cb_of(s.codebooks, r, j);
      const float sc = P.scale(s, r, j);
      const double v = w[size_t(j)];
      int best = 0;
      double bd = INFINITY, bq = 0;
      for (int i = 0; i < P.L.k; ++i) {
        const double q = double(cb[i] * sc);
        const double d = std::fabs(v - q);
        if (d < bd) bd = d, best = i, bq = q;
      }
      ir[j] = uint8_t(best);
      const double* uj = u.data() + j * cols;
      const double e = (v - bq) / uj[j];
      for (int64_t k = j + 1; k < cols; ++k) w[size_t(k)] -= e * uj[k];
    }
  });
}

void refit_scales(const Problem& P, State& s) {
  const Layout& L = P.L;
  if (!L.sb) return;
  const int64_t cols = L.cols, nb = L.n_sb;
  parallel_for(P.threads, L.rows, [&](int64_t r, int) {
    std::vector<double> u(static_cast<size_t>(cols)), a(static_cast<size_t>(nb * nb), 0.0), rhs(static_cast<size_t>(nb), 0.0), acc(static_cast<size_t>(nb));
    const uint8_t* ir = s.idx.data() + r * cols;
    for (int64_t j = 0; j < cols; ++j) u[size_t(j)] = double(L.cb_of(s.codebooks, r, j)[ir[j]]);
    const double* htr = P.ht.data() + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      if (u[size_t(j)] == 0) continue;
      const double* h = P.hd.data() + j * cols;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t k0 = b * L.sb, k1 = std::min(cols, k0 + L.sb);
        double d = 0;
        for (int64_t k = k0; k < k1; ++k) d += h[k] * u[size_t(k)];
        acc[size_t(b)] = d;
      }
      const int64_t bj = j / L.sb;
      for (int64_t b = 0; b < nb; ++b) a[size_t(bj * nb + b)] += u[size_t(j)] * acc[size_t(b)];
      rhs[size_t(bj)] += u[size_t(j)] * htr[j];
    }
    float* sc = s.scales.data() + r * nb;
    std::vector<double> x(sc, sc + nb);
    if (!solve_ridge(a, rhs, nb, x.data())) return;
    for (int64_t b = 0; b < nb; ++b)
      if (!(x[size_t(b)] > 0)) return;  // a sign flip: keep this row's scales
    for (int64_t b = 0; b < nb; ++b) sc[b] = round_scale(P.spec->scale_dtype, x[size_t(b)]);
  });
}

// Sorts codebook c (k values at cb) and remaps the indices of the weights that use it.
void sort_codebook(const Layout& L, State& s, int64_t c, DType dtype) {
  const int k = L.k;
  float* cb = s.codebooks.data() + c * k;
  for (int i = 0; i < k; ++i) cb[i] = round_to(dtype, cb[i]);
  int perm[kMaxLevels];
  std::iota(perm, perm + k, 0);
  std::stable_sort(perm, perm + k, [&](int x, int y) { return cb[x] < cb[y]; });
  bool moved = false;
  for (int i = 0; i < k; ++i) moved |= perm[i] != i;
  if (!moved) return;
  float sorted[kMaxLevels];
  uint8_t to[kMaxLevels];
  for (int i = 0; i < k; ++i) sorted[i] = cb[perm[i]], to[perm[i]] = uint8_t(i);
  std::copy(sorted, sorted + k, cb);
  auto remap = [&](int64_t r, int64_t j0, int64_t j1) {
    uint8_t* ir = s.idx.data() + r * L.cols;
    for (int64_t j = j0; j < j1; ++j) ir[j] = to[ir[j]];
  };
  if (L.scope == CodebookScope::kTensor) {
    for (int64_t r = 0; r < L.rows; ++r) remap(r, 0, L.cols);
  } else if (L.scope == CodebookScope::kRow) {
    remap(c, 0, L.cols);
  } else {
    const int64_t r = c / L.n_groups, g = c % L.n_groups;
    remap(r, g * L.group, std::min(L.cols, (g + 1) * L.group));
  }
}

void refit_centroids(const Problem& P, State& s) {
  const Layout& L = P.L;
  const int64_t cols = L.cols, n = P.slots_per_row();
  const bool shared = L.scope == CodebookScope::kTensor;
  // Tensor codebook: per-row normal equations, reduced in row order afterwards.
  std::vector<double> m_all(shared ? size_t(L.rows * n * n) : 0), r_all(shared ? size_t(L.rows * n) : 0);
  parallel_for(P.threads, L.rows, [&](int64_t r, int) {
    std::vector<double> m(static_cast<size_t>(n * n), 0.0), rhs(static_cast<size_t>(n), 0.0), acc(static_cast<size_t>(n)), a(static_cast<size_t>(cols));
    std::vector<int64_t> slot(static_cast<size_t>(cols));
    const uint8_t* ir = s.idx.data() + r * cols;
    for (int64_t j = 0; j < cols; ++j) a[size_t(j)] = double(P.scale(s, r, j)), slot[size_t(j)] = P.slot(j, ir[j]);
    const double* htr = P.ht.data() + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      if (a[size_t(j)] == 0) continue;
      const double* h = P.hd.data() + j * cols;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t k = 0; k < cols; ++k) acc[size_t(slot[size_t(k)])] += h[k] * a[size_t(k)];
      double* mj = m.data() + slot[size_t(j)] * n;
      for (int64_t q = 0; q < n; ++q) mj[q] += a[size_t(j)] * acc[size_t(q)];
      rhs[size_t(slot[size_t(j)])] += a[size_t(j)] * htr[j];
    }
    if (shared) {
      std::copy(m.begin(), m.end(), m_all.begin() + r * n * n);
      std::copy(rhs.begin(), rhs.end(), r_all.begin() + r * n);
      return;
    }
    // Row: one codebook of this row; group: the row's n_groups codebooks, solved jointly.
    float* cb = s.codebooks.data() + (L.scope == CodebookScope::kRow ? r : r * L.n_groups) * L.k;
    std::vector<double> x(cb, cb + n);
    if (solve_ridge(m, rhs, n, x.data()))
      for (int64_t q = 0; q < n; ++q) cb[q] = float(x[size_t(q)]);
  });
  if (shared) {
    std::vector<double> m(static_cast<size_t>(n * n), 0.0), rhs(static_cast<size_t>(n), 0.0);
    for (int64_t r = 0; r < L.rows; ++r) {
      for (int64_t i = 0; i < n * n; ++i) m[size_t(i)] += m_all[size_t(r * n * n + i)];
      for (int64_t i = 0; i < n; ++i) rhs[size_t(i)] += r_all[size_t(r * n + i)];
    }
    std::vector<double> x(s.codebooks.begin(), s.codebooks.begin() + n);
    if (solve_ridge(m, rhs, n, x.data()))
      for (int64_t q = 0; q < n; ++q) s.codebooks[size_t(q)] = float(x[size_t(q)]);
  }
  const int64_t n_cb = int64_t(s.codebooks.size()) / L.k;
  for (int64_t c = 0; c < n_cb; ++c) sort_codebook(L, s, c, P.spec->codebook_dtype);
}

}  // namespace

bool cholesky_lower(std::vector<double>& a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double* rj = a.data() + j * n;
    double d = rj[j];
    for (int64_t k = 0; k < j; ++k) d -= rj[k] * rj[k];
    if (!(d > 0) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    rj[j] = ljj;
    for (int64_t i = j + 1; i < n; ++i) {
      double* ri = a.data() + i * n;
      double s = ri[j];
      for (int64_t k = 0; k < j; ++k) s -= ri[k] * rj[k];
      ri[j] = s / ljj;
    }
  }
  return true;
}

QuantizedTensor quantize_hessian(const float* target, int64_t rows, int64_t cols, const double* H,
                                 const QuantSpec& spec, const HessianOptions& opts, HessianReport* report) {
  if (!H) throw Error("quantize_hessian: null H");
  if (opts.rounds < 1) throw Error(fmt::format("quantize_hessian: rounds = {} must be >= 1", opts.rounds));
  if (!(opts.damp >= 0) || !std::isfinite(opts.damp))
    throw Error(fmt::format("quantize_hessian: damp = {} must be >= 0", opts.damp));
  if (rows <= 0 || cols <= 0) throw Error(fmt::format("quantize_hessian: bad shape {} x {}", rows, cols));
  double mean_diag = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const double d = H[j * cols + j];
    if (!std::isfinite(d) || d < 0) throw Error(fmt::format("quantize_hessian: H[{0},{0}] = {1} is not >= 0", j, d));
    mean_diag += d;
  }
  mean_diag /= double(cols);
  for (int64_t i = 0; i < cols * cols; ++i)
    if (!std::isfinite(H[i])) throw Error(fmt::format("quantize_hessian: H[{}] is not finite", i));

  // The plain fit, weighted by the diagonal of H (the importance of each input column).
  std::vector<float> imp(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) imp[size_t(j)] = float(H[j * cols + j] / (mean_diag > 0 ? mean_diag : 1.0));
  QuantSpec sp = spec;
  sp.importance = imp.data();
  QuantizedTensor q = quantize(target, rows, cols, sp);  // validates target and spec

  Problem P{Layout{rows, cols, 1 << spec.bits, spec.scope, cols, 1, q.scale_block, q.n_scale_blocks()},
            &spec, target, {}, {}, std::max(1, spec.threads)};
  if (spec.scope == CodebookScope::kGroup) {
    P.L.group = q.group_size;
    P.L.n_groups = (cols + q.group_size - 1) / q.group_size;
  }
  const double lambda = opts.damp * (mean_diag > 0 ? mean_diag : 1.0) + (mean_diag > 0 ? 0.0 : 1.0);
  P.hd.assign(H, H + cols * cols);
  for (int64_t j = 0; j < cols; ++j) P.hd[size_t(j * cols + j)] += lambda;
  P.ht.assign(size_t(rows * cols), 0.0);
  std::vector<double> ref(static_cast<size_t>(rows));
  parallel_for(P.threads, rows, [&](int64_t r, int) {
    const float* tr = target + r * cols;
    double* o = P.ht.data() + r * cols;
    double e = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double* h = P.hd.data() + j * cols;
      double d = 0;
      for (int64_t k = 0; k < cols; ++k) d += h[k] * double(tr[k]);
      o[j] = d;
      e += double(tr[j]) * d;
    }
    ref[size_t(r)] = e;
  });

  // U: upper factor of Hd^-1 (header comment): Cholesky of the reversed Hd, mapped back,
  // inverted. X = L2^-1 (lower) row by row; U[i][j] = X[n-1-i][n-1-j].
  std::vector<double> u(static_cast<size_t>(cols * cols), 0.0);
  {
    std::vector<double> l2(static_cast<size_t>(cols * cols));
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) l2[size_t(i * cols + j)] = P.hd[size_t((cols - 1 - i) * cols + (cols - 1 - j))];
    if (!cholesky_lower(l2, cols)) throw Error("quantize_hessian: H + damping is not positive definite");
    std::vector<double> x(static_cast<size_t>(cols * cols), 0.0);
    for (int64_t i = 0; i < cols; ++i) {
      double* xi = x.data() + i * cols;
      const double* li = l2.data() + i * cols;
      const double inv = 1.0 / li[i];
      for (int64_t k = 0; k < i; ++k) {
        const double c = li[k];
        const double* xk = x.data() + k * cols;
        for (int64_t j = 0; j <= k; ++j) xi[j] -= c * xk[j];
      }
      for (int64_t j = 0; j < i; ++j) xi[j] *= inv;
      xi[i] = inv;
    }
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = i; j < cols; ++j) u[size_t(i * cols + j)] = x[size_t((cols - 1 - i) * cols + (cols - 1 - j))];
  }

  State cur;
  cur.idx.resize(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      cur.idx[size_t(r * cols + j)] = unpack_index(q.indices.data() + r * q.row_bytes(), j, q.bits);
  cur.codebooks = q.codebooks;
  cur.scales = q.scales;
  objective(P, cur);
  State best = cur;
  const double err_plain = cur.err;
  auto keep = [&]() {
    objective(P, cur);
    if (cur.err < best.err) best = cur;
  };
  for (int round = 0; round < opts.rounds; ++round) {
    assign_gptq(P, u, cur);
    keep();
    refit_scales(P, cur);
    keep();
    refit_centroids(P, cur);
    keep();
  }
  q.codebooks = best.codebooks;
  q.scales = best.scales;
  parallel_for(P.threads, rows, [&](int64_t r, int) {
    pack_indices(best.idx.data() + r * cols, cols, spec.bits, q.indices.data() + r * q.row_bytes());
  });
  if (report) {
    report->err_plain = err_plain;
    report->err_final = best.err;
    report->err_ref = std::accumulate(ref.begin(), ref.end(), 0.0);
  }
  return q;
}

}  // namespace kmq

// Output-aware quantization (quantize_hessian, the core of kmq-convert --refine): on random
// correlated inputs, at every scope, bit width and scale setting, with odd shapes: the
// reported output error is the one recomputed here from the stored tensor, it is never
// above the plain fit's and clearly below it, the tensor is a valid .kmq tensor (sorted
// codebooks, values exact in their dtypes), results do not depend on the thread count,
// and bad input is refused.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kmq/error.h"
#include "kmq/quant.h"
#include "test_util.h"
#include "util/half.h"

using namespace kmq;

namespace {

// Inputs with correlated neighbouring columns and uneven column energy (as activations
// have), T x cols, and H = X^T X.
std::vector<double> make_h(int64_t T, int64_t cols, uint64_t seed) {
  const auto z = test::random_floats(size_t(T * cols), seed, 1.0f);
  std::vector<double> x(size_t(T * cols)), h(size_t(cols * cols), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < cols; ++j) {
      const double prev = j ? z[size_t(t * cols + j - 1)] : 0.0;
      x[size_t(t * cols + j)] = (z[size_t(t * cols + j)] + 0.9 * prev) * (j % 5 == 0 ? 3.0 : 1.0);
    }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t a = 0; a < cols; ++a)
      for (int64_t b = 0; b < cols; ++b) h[size_t(a * cols + b)] += x[size_t(t * cols + a)] * x[size_t(t * cols + b)];
  return h;
}

// sum_r (w'_r - t_r)^T (H + damp * mean(diag) I) (w'_r - t_r), from the stored tensor.
double output_err(const std::vector<float>& t, const QuantizedTensor& q, const std::vector<double>& h, double damp) {
  const int64_t n = q.cols;
  double md = 0;
  for (int64_t j = 0; j < n; ++j) md += h[size_t(j * n + j)];
  md /= double(n);
  std::vector<float> row(static_cast<size_t>(n));
  double e = 0;
  for (int64_t r = 0; r < q.rows; ++r) {
    dequantize_row(q, r, row.data());
    std::vector<double> d(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) d[size_t(j)] = double(row[size_t(j)]) - double(t[size_t(r * n + j)]);
    for (int64_t a = 0; a < n; ++a) {
      double s = damp * md * d[size_t(a)];
      for (int64_t b = 0; b < n; ++b) s += h[size_t(a * n + b)] * d[size_t(b)];
      e += d[size_t(a)] * s;
    }
  }
  return e;
}

}  // namespace

TEST_CASE("quantize_hessian lowers the output error at every scope, bit width and scale setting") {
  const int64_t rows = 37, cols = 200, T = 600;  // cols: a tail scale block and group
  const auto h = make_h(T, cols, 11);
  const auto w = test::random_floats(size_t(rows * cols), 12, 0.05f);
  HessianOptions ho;
  for (CodebookScope scope : {CodebookScope::kTensor, CodebookScope::kRow, CodebookScope::kGroup}) {
    for (int bits : {1, 2, 3, 4}) {
      for (int64_t sb : {int64_t(0), int64_t(64)}) {
        CAPTURE(int(scope));
        CAPTURE(bits);
        CAPTURE(sb);
        QuantSpec s;
        s.bits = bits;
        s.scope = scope;
        s.group_size = 96;
        s.scale_block = sb;
        s.scale_mode = sb ? (bits <= 2 ? ScaleMode::kAbsMean : ScaleMode::kAbsMax) : ScaleMode::kNone;
        s.codebook_dtype = scope == CodebookScope::kTensor ? DType::kF32 : DType::kF16;
        HessianReport rep;
        const QuantizedTensor q = quantize_hessian(w.data(), rows, cols, h.data(), s, ho, &rep);
        const double e = output_err(w, q, h, ho.damp);
        CHECK(std::fabs(e - rep.err_final) <= 1e-9 * rep.err_ref);
        // The plain fit it starts from is quantize() with importance diag(H).
        std::vector<float> imp(static_cast<size_t>(cols));
        double md = 0;
        for (int64_t j = 0; j < cols; ++j) md += h[size_t(j * cols + j)];
        for (int64_t j = 0; j < cols; ++j) imp[size_t(j)] = float(h[size_t(j * cols + j)] / (md / double(cols)));
        QuantSpec sp = s;
        sp.importance = imp.data();
        const double e_plain = output_err(w, quantize(w.data(), rows, cols, sp), h, ho.damp);
        CHECK(std::fabs(e_plain - rep.err_plain) <= 1e-9 * rep.err_ref);
        MESSAGE("scope ", int(scope), " bits ", bits, " sb ", sb, ": output error ", rep.err_plain / rep.err_ref,
                " -> ", rep.err_final / rep.err_ref);
        CHECK(rep.err_final <= rep.err_plain);
        // Correlated inputs: error feedback and the refits must buy a clear margin.
        CHECK(rep.err_final < 0.9 * rep.err_plain);
        // A valid tensor: sorted codebooks, every value exact in its dtype.
        const int k = 1 << bits;
        for (size_t c = 0; c < q.codebooks.size(); c += size_t(k)) {
          CHECK(std::is_sorted(q.codebooks.begin() + int64_t(c), q.codebooks.begin() + int64_t(c) + k));
          for (int i = 0; i < k; ++i) {
            const float v = q.codebooks[c + size_t(i)];
            CHECK(v == (s.codebook_dtype == DType::kF16 ? round_f16(v) : v));
          }
        }
        for (float v : q.scales) {
          CHECK(v == round_f16(v));
          CHECK(v >= 0);
        }
        s.threads = 3;
        const QuantizedTensor q3 = quantize_hessian(w.data(), rows, cols, h.data(), s, ho);
        CHECK(q3.indices == q.indices);
        CHECK(q3.codebooks == q.codebooks);
        CHECK(q3.scales == q.scales);
      }
    }
  }
}

TEST_CASE("quantize_hessian with uncorrelated equal inputs is the plain fit or better") {
  // H = I: no error feedback to give; the refits may still move scales and centroids.
  const int64_t rows = 20, cols = 130;
  std::vector<double> h(size_t(cols * cols), 0.0);
  for (int64_t j = 0; j < cols; ++j) h[size_t(j * cols + j)] = 1.0;
  const auto w = test::random_floats(size_t(rows * cols), 5, 0.1f);
  QuantSpec s;
  s.bits = 2;
  s.scale_mode = ScaleMode::kAbsMean;
  HessianReport rep;
  const QuantizedTensor q = quantize_hessian(w.data(), rows, cols, h.data(), s, HessianOptions{}, &rep);
  CHECK(rep.err_final <= rep.err_plain);
  CHECK(std::fabs(output_err(w, q, h, HessianOptions{}.damp) - rep.err_final) <= 1e-9 * rep.err_ref);
}

TEST_CASE("quantize_hessian refuses bad input") {
  const int64_t rows = 4, cols = 8;
  std::vector<double> h(size_t(cols * cols), 0.0);
  for (int64_t j = 0; j < cols; ++j) h[size_t(j * cols + j)] = 1.0;
  const auto w = test::random_floats(size_t(rows * cols), 3, 0.1f);
  QuantSpec s;
  CHECK_THROWS_AS(quantize_hessian(w.data(), rows, cols, nullptr, s, HessianOptions{}), Error);
  auto bad = h;
  bad[9] = -1.0;  // a negative diagonal entry
  CHECK_THROWS_AS(quantize_hessian(w.data(), rows, cols, bad.data(), s, HessianOptions{}), Error);
  bad = h;
  bad[3] = NAN;
  CHECK_THROWS_AS(quantize_hessian(w.data(), rows, cols, bad.data(), s, HessianOptions{}), Error);
  HessianOptions ho;
  ho.rounds = 0;
  CHECK_THROWS_AS(quantize_hessian(w.data(), rows, cols, h.data(), s, ho), Error);
}

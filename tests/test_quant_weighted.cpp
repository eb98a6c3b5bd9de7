// Importance-weighted quantization and the least-squares refit (QuantSpec::importance,
// ls_iters): the refit never makes the weighted error worse, weighting moves the error
// away from important columns, results do not depend on the thread count, and exact-level
// (fake-quantized) matrices are stored losslessly.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "kmq/quant.h"
#include "test_util.h"
#include "util/half.h"

using namespace kmq;

namespace {

double weighted_err(const std::vector<float>& w, const QuantizedTensor& q, const std::vector<float>& imp) {
  std::vector<float> row(size_t(q.cols));
  double e = 0;
  for (int64_t r = 0; r < q.rows; ++r) {
    dequantize_row(q, r, row.data());
    for (int64_t j = 0; j < q.cols; ++j) {
      const double d = double(w[size_t(r * q.cols + j)]) - double(row[size_t(j)]);
      e += (imp.empty() ? 1.0 : imp[size_t(j)]) * d * d;
    }
  }
  return e;
}

}  // namespace

TEST_CASE("least-squares refit lowers the weighted error at every scope") {
  const int64_t rows = 48, cols = 320;
  const auto w = test::random_floats(size_t(rows * cols), 7, 0.05f);
  std::vector<float> imp(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) imp[size_t(j)] = j % 7 == 0 ? 20.0f : 0.5f + float(j % 3);
  for (CodebookScope scope : {CodebookScope::kTensor, CodebookScope::kRow, CodebookScope::kGroup}) {
    for (int bits : {1, 2, 4}) {
      for (int64_t sb : {int64_t(0), int64_t(64)}) {
        CAPTURE(int(scope));
        CAPTURE(bits);
        CAPTURE(sb);
        QuantSpec s;
        s.bits = bits;
        s.scope = scope;
        s.group_size = 128;
        s.scale_block = sb;
        s.scale_mode = sb ? (bits <= 2 ? ScaleMode::kAbsMean : ScaleMode::kAbsMax) : ScaleMode::kNone;
        s.codebook_dtype = scope == CodebookScope::kTensor ? DType::kF32 : DType::kF16;
        s.importance = imp.data();
        const double e0 = weighted_err(w, quantize(w.data(), rows, cols, s), imp);
        s.ls_iters = 4;
        const QuantizedTensor q = quantize(w.data(), rows, cols, s);
        const double e1 = weighted_err(w, q, imp);
        // f16 rounding of refitted centroids and scales may cost a hair; never more
        CHECK(e1 <= e0 * 1.001);
        s.threads = 3;
        const QuantizedTensor q3 = quantize(w.data(), rows, cols, s);
        CHECK(q3.indices == q.indices);
        CHECK(q3.codebooks == q.codebooks);
        CHECK(q3.scales == q.scales);
      }
    }
  }
}

TEST_CASE("importance moves the error away from important columns") {
  const int64_t rows = 64, cols = 256;
  const auto w = test::random_floats(size_t(rows * cols), 11, 0.05f);
  std::vector<float> imp(size_t(cols), 1.0f);
  for (int64_t j = 0; j < cols; j += 4) imp[size_t(j)] = 100.0f;
  QuantSpec s;
  s.bits = 2;
  s.scale_block = 64;
  s.scale_mode = ScaleMode::kAbsMean;
  s.ls_iters = 2;
  const double plain = weighted_err(w, quantize(w.data(), rows, cols, s), imp);
  s.importance = imp.data();
  const double weighted = weighted_err(w, quantize(w.data(), rows, cols, s), imp);
  CHECK(weighted < plain * 0.95);
}

TEST_CASE("exact levels: rows of few distinct values are stored losslessly") {
  const int64_t rows = 16, cols = 96;
  std::vector<float> w(size_t(rows * cols));
  const float lv[4] = {-1.5f, -0.5f, 0.5f, 1.5f};
  for (int64_t r = 0; r < rows; ++r) {
    const float a = round_bf16(0.01f * float(r + 1));
    for (int64_t j = 0; j < cols; ++j) w[size_t(r * cols + j)] = round_bf16(lv[(r * 7 + j * 3) % 4] * a);
  }
  QuantizedTensor q;
  REQUIRE(quantize_exact_levels(w.data(), rows, cols, 4, &q));
  CHECK(q.bits == 2);
  CHECK(q.scope == CodebookScope::kRow);
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(q, r, row.data());
    for (int64_t j = 0; j < cols; ++j) CHECK(row[size_t(j)] == w[size_t(r * cols + j)]);
  }
  CHECK_FALSE(quantize_exact_levels(w.data(), rows, cols, 1, &q));  // 4 values need 2 bits
  const auto noise = test::random_floats(size_t(rows * cols), 3);
  CHECK_FALSE(quantize_exact_levels(noise.data(), rows, cols, 4, &q));
}

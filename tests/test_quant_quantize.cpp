// Tests of quantize / dequantize_row / quant_error / bits_per_weight: every bits x scope x
// scale block on odd shapes, checked against the format's formula recomputed here, plus
// degenerate inputs, spec validation and thread-count determinism.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <limits>
#include <string>

#include "kmq/error.h"
#include "kmq/quant.h"
#include "test_util.h"
#include "util/half.h"

using namespace kmq;

namespace {

float round_dtype(DType t, float v) {
  return t == DType::kF16 ? round_f16(v) : t == DType::kBF16 ? round_bf16(v) : v;
}

// Index j of a row, read bit by bit (LSB-first stream): independent of unpack_index.
int read_index(const QuantizedTensor& q, int64_t r, int64_t j) {
  const uint8_t* row = q.indices.data() + r * q.row_bytes();
  int v = 0;
  for (int b = 0; b < q.bits; ++b) {
    const int64_t p = j * q.bits + b;
    v |= ((row[p >> 3] >> (p & 7)) & 1) << b;
  }
  return v;
}

const float* codebook_at(const QuantizedTensor& q, int64_t r, int64_t j) {
  const int64_t k = int64_t(1) << q.bits;
  int64_t c = 0;
  if (q.scope == CodebookScope::kRow) c = r;
  if (q.scope == CodebookScope::kGroup)
    c = r * ((q.cols + q.group_size - 1) / q.group_size) + j / q.group_size;
  return q.codebooks.data() + c * k;
}

float scale_at(const QuantizedTensor& q, int64_t r, int64_t j) {
  if (!q.scale_block) return 1.0f;
  return q.scales[r * ((q.cols + q.scale_block - 1) / q.scale_block) + j / q.scale_block];
}

// w[r][j] = codebook(r, j)[idx[r][j]] * scale[r][j / scale_block], from the header comment.
float formula(const QuantizedTensor& q, int64_t r, int64_t j) {
  const float c = codebook_at(q, r, j)[read_index(q, r, j)];
  return q.scale_block ? c * scale_at(q, r, j) : c;
}

bool same_bits(const QuantizedTensor& a, const QuantizedTensor& b) {
  return a.indices == b.indices && a.codebooks == b.codebooks && a.scales == b.scales &&
         a.group_size == b.group_size && a.scale_block == b.scale_block;
}

const char* scope_str(CodebookScope s) {
  return s == CodebookScope::kTensor ? "tensor" : s == CodebookScope::kRow ? "row" : "group";
}

// Every structural property of a quantization of w, checked from its definition.
void check_quantized(const QuantizedTensor& q, const std::vector<float>& w, const QuantSpec& spec) {
  const int64_t rows = q.rows, cols = q.cols, k = int64_t(1) << q.bits;
  REQUIRE(q.indices.size() == size_t(rows * ((cols * q.bits + 7) / 8)));
  REQUIRE(q.codebooks.size() == size_t(q.n_codebooks() * k));
  REQUIRE(q.scales.size() == size_t(rows * q.n_scale_blocks()));
  bool sorted = true, cb_exact = true, sc_exact = true, sc_right = true;
  for (int64_t c = 0; c < q.n_codebooks(); ++c) {
    const float* cb = q.codebooks.data() + c * k;
    sorted &= std::is_sorted(cb, cb + k);
    for (int64_t i = 0; i < k; ++i) cb_exact &= round_dtype(q.codebook_dtype, cb[i]) == cb[i];
  }
  CHECK(sorted);
  CHECK(cb_exact);
  for (int64_t r = 0; r < rows && q.scale_block; ++r) {
    for (int64_t b = 0; b < q.n_scale_blocks(); ++b) {
      const float s = q.scales[r * q.n_scale_blocks() + b];
      sc_exact &= s >= 0 && round_dtype(q.scale_dtype, s) == s;
      double v = 0;  // the scale recomputed from its block
      const int64_t j0 = b * q.scale_block, j1 = std::min(cols, j0 + q.scale_block);
      for (int64_t j = j0; j < j1; ++j)
        v = spec.scale_mode == ScaleMode::kAbsMax ? std::max(v, double(std::fabs(w[r * cols + j])))
                                                  : v + std::fabs(double(w[r * cols + j]));
      if (spec.scale_mode == ScaleMode::kAbsMean) v /= double(j1 - j0);
      sc_right &= s == round_dtype(q.scale_dtype, float(v));
    }
  }
  CHECK(sc_exact);
  CHECK(sc_right);
  std::vector<float> row(cols);
  bool formula_ok = true, nearest = true;
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(q, r, row.data());
    for (int64_t j = 0; j < cols; ++j) {
      formula_ok &= row[j] == formula(q, r, j);
      // Nearest stored level: no other level of this weight's codebook and scale is closer.
      const float* cb = codebook_at(q, r, j);
      const float s = scale_at(q, r, j);
      const double x = w[r * cols + j];
      const double got = std::fabs(x - double(row[j]));
      for (int64_t i = 0; i < k; ++i) {
        const float lv = q.scale_block ? cb[i] * s : cb[i];
        nearest &= got <= std::fabs(x - double(lv));
      }
    }
  }
  CHECK(formula_ok);
  CHECK(nearest);
}

}  // namespace

TEST_CASE("quantize: bits x scope x scale block on odd shapes") {
  struct Scope {
    CodebookScope scope;
    int64_t group;
  };
  const Scope scopes[] = {{CodebookScope::kTensor, 0},
                          {CodebookScope::kRow, 0},
                          {CodebookScope::kGroup, 32},
                          {CodebookScope::kGroup, 300}};  // longer than a row: one per row
  int configs = 0;
  for (int64_t cols : {100, 65, 257}) {
    const int64_t rows = 3;
    auto w = test::random_floats(size_t(rows * cols), 100 + cols, 0.02f);
    for (const Scope& sc : scopes) {
      for (int64_t sb : {0, 64, 48}) {
        for (int64_t exact_max : {4096, 40}) {  // 40: groups of > 40 use the histogram path
          double prev_nmse = 2.0;
          for (int bits = 1; bits <= 4; ++bits) {
            QuantSpec spec;
            spec.bits = bits;
            spec.scope = sc.scope;
            spec.group_size = sc.group;
            spec.scale_block = sb;
            spec.scale_mode = bits <= 2 ? ScaleMode::kAbsMean : ScaleMode::kAbsMax;
            spec.codebook_dtype = (cols + bits) % 2 ? DType::kF16 : DType::kF32;
            spec.scale_dtype = bits % 2 ? DType::kBF16 : DType::kF16;
            spec.exact_max = exact_max;
            CAPTURE(cols);
            CAPTURE(scope_str(sc.scope));
            CAPTURE(sc.group);
            CAPTURE(sb);
            CAPTURE(exact_max);
            CAPTURE(bits);
            auto q = quantize(w.data(), rows, cols, spec);
            CHECK(q.bits == bits);
            CHECK(q.rows == rows);
            CHECK(q.cols == cols);
            CHECK(q.scale_block == std::min(sb, cols));
            CHECK(q.group_size ==
                  (sc.scope == CodebookScope::kGroup ? std::min(sc.group, cols) : 0));
            check_quantized(q, w, spec);
            const double nmse = quant_error(w.data(), q).nmse;
            CHECK(nmse < prev_nmse);  // more bits, less error
            CHECK(nmse > 0);
            prev_nmse = nmse;
            spec.threads = 2;
            CHECK(same_bits(quantize(w.data(), rows, cols, spec), q));
            spec.threads = 3;
            CHECK(same_bits(quantize(w.data(), rows, cols, spec), q));
            ++configs;
          }
        }
      }
    }
  }
  CHECK(configs == 3 * 4 * 3 * 2 * 4);
}

TEST_CASE("quantize: NMSE of plain k-means on Gaussian weights") {
  // Normalising by absmax folds the distribution, but a per-tensor codebook on 64-weight
  // blocks must still land near the Lloyd-Max figure for each bit width (within 40%).
  auto w = test::random_floats(64 * 1024, 3);
  const double lloyd_max[] = {0.3634, 0.1175, 0.03454, 0.009497};
  for (int bits = 1; bits <= 4; ++bits) {
    QuantSpec spec;
    spec.bits = bits;
    const double nmse = quant_error(w.data(), quantize(w.data(), 64, 1024, spec)).nmse;
    MESSAGE("bits " << bits << ": NMSE " << nmse << " (Lloyd-Max Gaussian " << lloyd_max[bits - 1]
                    << ")");
    CHECK(nmse < lloyd_max[bits - 1] * 1.4);
    spec.scale_block = 0;  // without scales it is exactly Lloyd-Max up to sampling
    const double plain = quant_error(w.data(), quantize(w.data(), 64, 1024, spec)).nmse;
    CHECK(plain == doctest::Approx(lloyd_max[bits - 1]).epsilon(0.05));
  }
}

TEST_CASE("quantize: determinism across threads on a larger matrix") {
  auto w = test::random_floats(64 * 2048, 9);
  for (CodebookScope scope : {CodebookScope::kTensor, CodebookScope::kRow, CodebookScope::kGroup}) {
    QuantSpec spec;
    spec.scope = scope;
    spec.group_size = 128;
    spec.exact_max = 1024;  // tensor and row scope use the histogram path
    spec.importance = nullptr;
    auto a = quantize(w.data(), 64, 2048, spec);
    spec.threads = 2;
    auto b = quantize(w.data(), 64, 2048, spec);
    spec.threads = 5;
    auto c = quantize(w.data(), 64, 2048, spec);
    CHECK(same_bits(a, b));
    CHECK(same_bits(a, c));
  }
}

TEST_CASE("bits_per_weight") {
  QuantizedTensor q;
  q.bits = 4;
  q.rows = q.cols = 4096;
  q.scope = CodebookScope::kTensor;
  q.scale_block = 64;
  q.codebook_dtype = DType::kF32;
  q.scale_dtype = DType::kF16;
  const double n = 4096.0 * 4096.0;
  CHECK(q.n_codebooks() == 1);
  CHECK(q.bits_per_weight() == doctest::Approx(4.25 + 16 * 32 / n).epsilon(1e-12));
  q.bits = 1;
  q.scope = CodebookScope::kGroup;
  q.group_size = 256;
  q.codebook_dtype = DType::kF16;
  q.scale_dtype = DType::kBF16;
  CHECK(q.n_codebooks() == 4096 * 16);
  CHECK(q.bits_per_weight() == doctest::Approx(1 + 2 * 16 / 256.0 + 0.25).epsilon(1e-12));
  q.bits = 3;
  q.scope = CodebookScope::kRow;
  q.rows = 3;
  q.cols = 100;  // 300 bits -> 38 bytes a row (4 padding bits), 2 scale blocks
  q.scale_block = 64;
  CHECK(q.n_codebooks() == 3);
  CHECK(q.bits_per_weight() == doctest::Approx((3 * 38 * 8 + 3 * 8 * 16 + 3 * 2 * 16) / 300.0));

  // And on a real quantization: 2 bits, groups of 50, no scales, 7 x 100.
  auto w = test::random_floats(700, 5);
  QuantSpec spec;
  spec.bits = 2;
  spec.scope = CodebookScope::kGroup;
  spec.group_size = 50;
  spec.scale_block = 0;
  auto qq = quantize(w.data(), 7, 100, spec);
  CHECK(qq.n_codebooks() == 14);
  CHECK(qq.bits_per_weight() == doctest::Approx((7 * 25 * 8 + 14 * 4 * 32) / 700.0));
}

TEST_CASE("quantize: degenerate data") {
  SUBCASE("all zeros") {
    std::vector<float> w(4 * 96, 0.0f);
    for (int64_t sb : {0, 64}) {
      QuantSpec spec;
      spec.scale_block = sb;
      for (CodebookScope s : {CodebookScope::kTensor, CodebookScope::kRow, CodebookScope::kGroup}) {
        spec.scope = s;
        auto q = quantize(w.data(), 4, 96, spec);
        const auto st = quant_error(w.data(), q);
        CHECK(st.mse == 0);
        CHECK(st.nmse == 0);
        for (float v : q.scales) CHECK(v == 0.0f);
      }
    }
  }
  SUBCASE("zero blocks among data reconstruct exactly and do not pull the codebook") {
    auto w = test::random_floats(4 * 256, 17);
    auto wz = w;
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t j = 64; j < 192; ++j) wz[r * 256 + j] = 0.0f;  // blocks 1 and 2 of each row
    QuantSpec spec;
    spec.bits = 2;
    auto q = quantize(wz.data(), 4, 256, spec);
    std::vector<float> row(256);
    for (int64_t r = 0; r < 4; ++r) {
      dequantize_row(q, r, row.data());
      for (int64_t j = 64; j < 192; ++j) CHECK(row[j] == 0.0f);
    }
    // The codebook equals the one fitted on the non-zero blocks alone.
    std::vector<float> w2;
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t j : {0, 192})
        w2.insert(w2.end(), wz.begin() + r * 256 + j, wz.begin() + r * 256 + j + 64);
    auto q2 = quantize(w2.data(), 4, 128, spec);
    CHECK(q.codebooks == q2.codebooks);
  }
  SUBCASE("rows of exactly 2^bits distinct values are exact with row codebooks") {
    std::vector<float> w(5 * 77);
    for (int64_t r = 0; r < 5; ++r)
      for (int64_t j = 0; j < 77; ++j)
        w[r * 77 + j] = float((j * 5 + r) % 8) * 0.25f - 1.0f + float(r);
    QuantSpec spec;
    spec.bits = 3;
    spec.scope = CodebookScope::kRow;
    spec.scale_block = 0;
    auto q = quantize(w.data(), 5, 77, spec);
    CHECK(quant_error(w.data(), q).mse == 0);
  }
  SUBCASE("constant rows with scales") {
    std::vector<float> w(3 * 130, -0.75f);
    QuantSpec spec;
    spec.bits = 1;
    spec.scope = CodebookScope::kGroup;
    spec.group_size = 64;
    auto q = quantize(w.data(), 3, 130, spec);
    CHECK(quant_error(w.data(), q).mse == 0);
  }
  SUBCASE("tiny and huge magnitudes keep scales finite and positive") {
    auto w = test::random_floats(2 * 128, 19, 1e-10f);  // absmax underflows f16
    QuantSpec spec;
    auto q = quantize(w.data(), 2, 128, spec);
    for (float s : q.scales) CHECK((s > 0 && std::isfinite(s)));
    CHECK(std::isfinite(quant_error(w.data(), q).nmse));
    auto big = test::random_floats(2 * 128, 20, 1e6f);  // absmax overflows f16
    auto qb = quantize(big.data(), 2, 128, spec);
    for (float s : qb.scales) CHECK(s == 65504.0f);
    CHECK(quant_error(big.data(), qb).nmse < 0.05);
    spec.scale_dtype = DType::kBF16;
    CHECK(quant_error(big.data(), quantize(big.data(), 2, 128, spec)).nmse < 0.05);
  }
}

TEST_CASE("quantize: importance weights favour important columns") {
  auto w = test::random_floats(16 * 256, 23);
  std::vector<float> imp(256, 0.01f);
  for (int j = 0; j < 256; j += 16) imp[j] = 100.0f;
  QuantSpec spec;
  spec.bits = 2;
  spec.scale_block = 0;  // so the fit's objective is exactly the weighted error
  auto weighted_err = [&](const QuantizedTensor& q) {
    std::vector<float> row(256);
    double e = 0;
    for (int64_t r = 0; r < 16; ++r) {
      dequantize_row(q, r, row.data());
      for (int j = 0; j < 256; ++j) e += imp[j] * std::pow(double(w[r * 256 + j]) - row[j], 2);
    }
    return e;
  };
  for (CodebookScope s : {CodebookScope::kTensor, CodebookScope::kRow, CodebookScope::kGroup}) {
    spec.scope = s;
    spec.importance = nullptr;
    const double plain = weighted_err(quantize(w.data(), 16, 256, spec));
    spec.importance = imp.data();
    auto q = quantize(w.data(), 16, 256, spec);
    CHECK(weighted_err(q) < plain);
    check_quantized(q, w, spec);
  }
}

TEST_CASE("quantize: spec validation") {
  auto w = test::random_floats(4 * 64, 29);
  auto bad = [&](auto edit) {
    QuantSpec spec;
    edit(spec);
    return spec;
  };
  CHECK_NOTHROW(quantize(w.data(), 4, 64, QuantSpec{}));
  CHECK_THROWS_AS(quantize(w.data(), 4, 64, bad([](QuantSpec& s) { s.bits = 0; })), Error);
  CHECK_THROWS_AS(quantize(w.data(), 4, 64, bad([](QuantSpec& s) { s.bits = 5; })), Error);
  CHECK_THROWS_AS(quantize(w.data(), 4, 64, bad([](QuantSpec& s) {
                             s.scope = CodebookScope::kGroup;
                             s.group_size = 0;
                           })),
                  Error);
  CHECK_THROWS_AS(quantize(w.data(), 4, 64, bad([](QuantSpec& s) { s.scope = CodebookScope(7); })),
                  Error);
  CHECK_THROWS_AS(quantize(w.data(), 4, 64, bad([](QuantSpec& s) { s.scale_block = -1; })), Error);
  CHECK_THROWS_AS(
      quantize(w.data(), 4, 64, bad([](QuantSpec& s) { s.scale_mode = ScaleMode::kNone; })), Error);
  CHECK_THROWS_AS(
      quantize(w.data(), 4, 64, bad([](QuantSpec& s) { s.codebook_dtype = DType::kBF16; })), Error);
  CHECK_THROWS_AS(quantize(w.data(), 4, 64, bad([](QuantSpec& s) { s.scale_dtype = DType::kF32; })),
                  Error);
  CHECK_THROWS_AS(quantize(w.data(), 4, 64, bad([](QuantSpec& s) { s.threads = 0; })), Error);
  CHECK_THROWS_AS(quantize(w.data(), 0, 64, QuantSpec{}), Error);
  CHECK_THROWS_AS(quantize(w.data(), 4, 0, QuantSpec{}), Error);
  CHECK_THROWS_AS(quantize(nullptr, 4, 64, QuantSpec{}), Error);
  std::vector<float> imp(64, 1.0f);
  imp[3] = -1.0f;
  CHECK_THROWS_AS(quantize(w.data(), 4, 64, bad([&](QuantSpec& s) { s.importance = imp.data(); })),
                  Error);
  w[77] = std::numeric_limits<float>::quiet_NaN();
  try {
    quantize(w.data(), 4, 64, QuantSpec{});
    FAIL("no error on NaN");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("[1, 13]") != std::string::npos);
  }
  // scale_mode is ignored without scales
  w[77] = 0.5f;
  CHECK_NOTHROW(quantize(w.data(), 4, 64, bad([](QuantSpec& s) {
                           s.scale_block = 0;
                           s.scale_mode = ScaleMode::kNone;
                         })));
}

// Timing of the brief's workloads: run with  test_quant_quantize -ns -tc='*speed*'
// Prints wall and process CPU seconds: on a shared machine the CPU time is the steadier.
TEST_CASE("quantize speed, 2048 x 8192" * doctest::skip()) {
  const int64_t rows = 2048, cols = 8192;
  auto w = test::random_floats(size_t(rows * cols), 1);
  struct Run {
    const char* name;
    CodebookScope scope;
    int64_t group;
    int bits;
  };
  const Run runs[] = {{"tensor", CodebookScope::kTensor, 0, 4},
                      {"row", CodebookScope::kRow, 0, 4},
                      {"group 64", CodebookScope::kGroup, 64, 4},
                      {"group 256", CodebookScope::kGroup, 256, 4},
                      {"group 64, 2 bits", CodebookScope::kGroup, 64, 2},
                      {"group 256, 2 bits", CodebookScope::kGroup, 256, 2},
                      {"tensor, 1 bit", CodebookScope::kTensor, 0, 1}};
  for (const Run& run : runs) {
    for (int threads : {1, 2}) {
      QuantSpec spec;
      spec.bits = run.bits;
      spec.scope = run.scope;
      spec.group_size = run.group;
      spec.threads = threads;
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      auto q = quantize(w.data(), rows, cols, spec);
      const double cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      MESSAGE(std::string(run.name)
              << ", absmax 64, threads " << threads << ": wall " << s << " s, cpu " << cpu
              << " s, NMSE " << quant_error(w.data(), q).nmse << ", " << q.bits_per_weight()
              << " bpw");
    }
  }
}

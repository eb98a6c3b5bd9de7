// CPU kernels: the scalar reference against an independent reconstruction of the format,
// and every ISA table this CPU can run against the reference, on random data, for every
// dtype, bit width 1-4, codebook scope, with and without scales, odd shapes and tails.
#include <cstdlib>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <random>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kernels/cpu/lut.h"
#include "test_util.h"
#include "util/half.h"

using namespace kmq;
using namespace kmq::cpu;

namespace {

// A random weight with owned storage.
struct RandomWeight {
  WeightView v;
  std::vector<uint8_t> data, codebooks, scales;
  std::vector<float> cb_f, sc_f;  // float copies for the independent reconstruction
  std::vector<unsigned> idx;      // unpacked indices
};

RandomWeight make_weight(DType dtype, int bits, CodebookScope scope, int64_t rows, int64_t cols, int64_t group,
                         int64_t sb, DType cb_dtype, DType sc_dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  RandomWeight w;
  w.v.dtype = dtype;
  w.v.rows = rows;
  w.v.cols = cols;
  if (dtype != DType::kKmq) {
    w.data.resize(size_t(rows * cols) * dtype_size(dtype));
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float x = nd(rng);
      if (dtype == DType::kF32) std::memcpy(&w.data[size_t(i) * 4], &x, 4);
      else {
        uint16_t h = dtype == DType::kF16 ? f32_to_f16(x) : f32_to_bf16(x);
        std::memcpy(&w.data[size_t(i) * 2], &h, 2);
      }
    }
    w.v.data = w.data.data();
    return w;
  }
  w.v.bits = bits;
  w.v.scope = scope;
  w.v.group_size = group;
  w.v.scale_block = sb;
  w.v.codebook_dtype = cb_dtype;
  w.v.scale_dtype = sc_dtype;
  const int64_t k = int64_t(1) << bits, row_bytes = (cols * bits + 7) / 8;
  w.idx.resize(size_t(rows * cols));
  w.data.assign(size_t(rows * row_bytes), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const unsigned id = unsigned(rng() % uint64_t(k));
      w.idx[size_t(r * cols + j)] = id;
      for (int b = 0; b < bits; ++b)  // write bit by bit: an independent packing
        if (id >> b & 1u) {
          const int64_t bit = j * bits + b;
          w.data[size_t(r * row_bytes + bit / 8)] |= uint8_t(1u << (bit % 8));
        }
    }
  const int64_t n_cb = scope == CodebookScope::kTensor ? 1 : scope == CodebookScope::kRow ? rows
                                                                                         : rows * ((cols + group - 1) / group);
  for (int64_t i = 0; i < n_cb * k; ++i) {
    float c = nd(rng);
    if (cb_dtype == DType::kF16) {
      uint16_t h = f32_to_f16(c);
      c = f16_to_f32(h);
      w.codebooks.insert(w.codebooks.end(), reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + 2);
    } else {
      w.codebooks.insert(w.codebooks.end(), reinterpret_cast<uint8_t*>(&c), reinterpret_cast<uint8_t*>(&c) + 4);
    }
    w.cb_f.push_back(c);
  }
  const int64_t n_sb = sb ? (cols + sb - 1) / sb : 0;
  for (int64_t i = 0; i < rows * n_sb; ++i) {
    uint16_t h = sc_dtype == DType::kF16 ? f32_to_f16(0.1f + std::abs(nd(rng))) : f32_to_bf16(0.1f + std::abs(nd(rng)));
    w.sc_f.push_back(sc_dtype == DType::kF16 ? f16_to_f32(h) : bf16_to_f32(h));
    w.scales.insert(w.scales.end(), reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + 2);
  }
  w.v.data = w.data.data();
  w.v.codebooks = w.codebooks.data();
  w.v.scales = sb ? w.scales.data() : nullptr;
  return w;
}

float expected(const RandomWeight& w, int64_t r, int64_t j) {
  const auto& v = w.v;
  if (v.dtype == DType::kF32) { float x; std::memcpy(&x, &w.data[size_t(r * v.cols + j) * 4], 4); return x; }
  if (v.dtype != DType::kKmq) {
    uint16_t h;
    std::memcpy(&h, &w.data[size_t(r * v.cols + j) * 2], 2);
    return v.dtype == DType::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
  const int64_t k = int64_t(1) << v.bits;
  const int64_t c = v.scope == CodebookScope::kTensor ? 0 : v.scope == CodebookScope::kRow ? r
                    : r * ((v.cols + v.group_size - 1) / v.group_size) + j / v.group_size;
  float x = w.cb_f[size_t(c * k + w.idx[size_t(r * v.cols + j)])];
  if (v.scale_block) x *= w.sc_f[size_t(r * ((v.cols + v.scale_block - 1) / v.scale_block) + j / v.scale_block)];
  return x;
}

std::vector<const Kernels*> runnable_tables() { return runnable_kernels(); }

void check_weight(const RandomWeight& w) {
  const auto& v = w.v;
  std::vector<float> row(size_t(v.cols));
  // 1. the reference reconstruction equals the format's definition
  for (int64_t r = 0; r < v.rows; ++r) {
    kernels_ref().dequant_row(v, r, row.data());
    for (int64_t j = 0; j < v.cols; ++j) REQUIRE(row[size_t(j)] == expected(w, r, j));
    // every ISA reconstructs bit-identically (same products, no reassociation)
    for (const Kernels* k : runnable_tables()) {
      std::vector<float> other(static_cast<size_t>(v.cols), -7.0f);
      k->dequant_row(v, r, other.data());
      CAPTURE(k->isa);
      REQUIRE(other == row);
    }
  }
  // 2. every ISA's matmul against a double-precision product, several token counts
  for (int64_t n_tok : {1, 2, 3, 5, 7}) {
    auto x = test::random_floats(size_t(n_tok * v.cols), 99 + n_tok);
    std::vector<double> want(size_t(n_tok * v.rows));
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t r = 0; r < v.rows; ++r) {
        double s = 0, a = 0;
        for (int64_t j = 0; j < v.cols; ++j) {
          s += double(expected(w, r, j)) * x[size_t(t * v.cols + j)];
          a += std::abs(double(expected(w, r, j)) * x[size_t(t * v.cols + j)]);
        }
        want[size_t(t * v.rows + r)] = s;
        (void)a;
      }
    for (const Kernels* k : runnable_tables()) {
      CAPTURE(k->isa);
      CAPTURE(n_tok);
      std::vector<float> y(size_t(n_tok * v.rows), -1.0f), scratch(size_t(4 * v.cols));
      // two row ranges, as the thread pool splits them (odd boundaries)
      const int64_t mid = v.rows / 3;
      k->matmul(v, x.data(), v.cols, n_tok, y.data(), v.rows, 0, mid, scratch.data());
      k->matmul(v, x.data(), v.cols, n_tok, y.data(), v.rows, mid, v.rows, scratch.data());
      double err = 0, ref = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        err += (y[i] - want[i]) * (y[i] - want[i]);
        ref += want[i] * want[i];
      }
      CHECK_MESSAGE(err / ref < 1e-10, "nmse ", err / ref);
    }
  }
}

}  // namespace

TEST_CASE("kernels: float weights, every dtype and odd shapes") {
  uint64_t seed = 1;
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {5, 7}, {9, 33}, {17, 100}, {13, 257}}) {
      CAPTURE(dtype_name(t));
      CAPTURE(rows);
      CAPTURE(cols);
      check_weight(make_weight(t, 0, CodebookScope::kTensor, rows, cols, 0, 0, DType::kF32, DType::kF16, seed++));
    }
}

TEST_CASE("kernels: quantized weights, bits 1-4 x scope x scales x odd shapes") {
  uint64_t seed = 100;
  for (int bits = 1; bits <= 4; ++bits)
    for (CodebookScope scope : {CodebookScope::kTensor, CodebookScope::kRow, CodebookScope::kGroup})
      for (int64_t sb : {0, 64, 24})
        for (auto [rows, cols, group] : {std::tuple<int64_t, int64_t, int64_t>{3, 64, 16}, {7, 100, 32}, {9, 129, 64},
                                         {5, 33, 33}, {11, 257, 40}}) {
          CAPTURE(bits);
          CAPTURE(scope_name(scope));
          CAPTURE(sb);
          CAPTURE(rows);
          CAPTURE(cols);
          const DType cb = scope == CodebookScope::kTensor ? DType::kF32 : DType::kF16;
          const DType sc = sb == 24 ? DType::kBF16 : DType::kF16;
          check_weight(make_weight(DType::kKmq, bits, scope, rows, cols, group, std::min(sb, cols), cb, sc, seed++));
        }
}

TEST_CASE("kernels: vector ops of every ISA against the reference") {
  for (const Kernels* k : runnable_tables()) {
    CAPTURE(k->isa);
    for (int64_t n : {1, 3, 8, 15, 16, 17, 64, 100, 1031}) {
      auto a = test::random_floats(size_t(n), 1), b = test::random_floats(size_t(n), 2);
      double d = 0, s = 0;
      for (int64_t i = 0; i < n; ++i) { d += double(a[i]) * b[i]; s += std::abs(double(a[i]) * b[i]); }
      CHECK(std::abs(k->dot(a.data(), b.data(), n) - d) <= 1e-5 * s + 1e-6);
      auto y1 = a, y2 = a;
      k->axpy(y1.data(), 0.37f, b.data(), n);
      kernels_ref().axpy(y2.data(), 0.37f, b.data(), n);
      for (int64_t i = 0; i < n; ++i) CHECK(y1[i] == doctest::Approx(y2[i]).epsilon(1e-6));
      std::vector<float> o1(static_cast<size_t>(n)), o2(static_cast<size_t>(n));
      k->rmsnorm(o1.data(), a.data(), b.data(), n, 1e-5f);
      double ss = 0;
      for (float v : a) ss += double(v) * v;
      const double inv = 1 / std::sqrt(ss / double(n) + 1e-5);
      for (int64_t i = 0; i < n; ++i) CHECK(o1[i] == doctest::Approx(a[i] * inv * b[i]).epsilon(1e-5));
      k->swiglu(o1.data(), a.data(), b.data(), n);
      for (int64_t i = 0; i < n; ++i) CHECK(o1[i] == doctest::Approx(a[i] / (1 + std::exp(-double(a[i]))) * b[i]).epsilon(1e-5));
      o2 = a;
      k->softmax(o2.data(), n);
      double mx = *std::max_element(a.begin(), a.end()), z = 0;
      for (float v : a) z += std::exp(v - mx);
      for (int64_t i = 0; i < n; ++i) CHECK(o2[i] == doctest::Approx(std::exp(a[i] - mx) / z).epsilon(1e-5));
    }
  }
}

TEST_CASE("kernels: KMQ_ISA choices are reported") {
  CHECK(available_isas().rfind("scalar", 0) == 0);
  CHECK(kernels().isa != nullptr);
  MESSAGE("isa ", std::string(kernels().isa), " (available: ", available_isas(), ")");
#if defined(__aarch64__)
  CHECK(std::string(kernels().isa) == "neon");
#endif
#if defined(__x86_64__)
  // a CPU with these features must get (and so test) the AVX-512 kernels
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    CHECK(available_isas().find("avx512") != std::string::npos);
    if (!std::getenv("KMQ_ISA")) CHECK(std::string(kernels().isa) == "avx512");
  } else {
    MESSAGE("this CPU has no AVX-512 (F/BW/VL/DQ): the avx512 kernels are built but not tested here");
  }
#endif
}

// The lookup-table (LUT) path of lut.h: every ISA bit-identical to the scalar LUT
// reference, and the reference within int8-table error of the exact product.
namespace {

// Squared error of y[t * rows + r] against the exact product over n_tok tokens of x, and
// the sum of the squared terms (an error relative to the size of the terms, robust when
// a dot is near zero): NMSE = err / nrm.
void error_vs_exact(const RandomWeight& w, const std::vector<float>& x, const std::vector<float>& y, int64_t n_tok,
                    double& err, double& nrm) {
  const auto& v = w.v;
  err = nrm = 0;
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = 0; r < v.rows; ++r) {
      double s = 0, s2 = 0;
      for (int64_t j = 0; j < v.cols; ++j) {
        const double p = double(expected(w, r, j)) * x[size_t(t * v.cols + j)];
        s += p;
        s2 += p * p;
      }
      const double d = y[size_t(t * v.rows + r)] - s;
      err += d * d;
      nrm += s2;
    }
}

void check_lut(const RandomWeight& w, int64_t n_tok, double max_nmse) {
  const auto& v = w.v;
  REQUIRE(lut_supported(v));
  auto L = pack_lut(v);
  auto x = test::random_floats(size_t(n_tok * v.cols), 7 + n_tok + v.cols);
  std::vector<int8_t> tables(size_t(n_tok * L->table_bytes()), 99);
  std::vector<uint8_t> mults(size_t(n_tok * L->mult_bytes()), 99);
  std::vector<float> ts(size_t(n_tok * L->n_blocks), -1.0f);
  const LutTables lt{tables.data(), mults.data(), ts.data()};
  // built in two block ranges, as the backend's threads do
  const int64_t bmid = L->n_blocks / 2;
  lut_build_tables(*L, x.data(), v.cols, n_tok, lt, 0, bmid);
  lut_build_tables(*L, x.data(), v.cols, n_tok, lt, bmid, L->n_blocks);
  std::vector<float> ref(size_t(n_tok * v.rows), -1.0f);
  lut_matmul_ref(*L, lt, n_tok, ref.data(), v.rows, 0, L->n_tiles);
  double err, nrm;
  error_vs_exact(w, x, ref, n_tok, err, nrm);
  CHECK_MESSAGE(err / nrm < max_nmse, "LUT reference nmse ", err / nrm);
  if (std::getenv("KMQ_TEST_VERBOSE"))
    MESSAGE("bits ", v.bits, " sb ", v.scale_block, " rows ", v.rows, " cols ", v.cols, " nmse ", err / nrm);
  CHECK(err > 0);  // int8 tables: an exact result would mean the test is not testing them
  for (const Kernels* k : runnable_tables()) {
    if (!k->lut_matmul) continue;
    CAPTURE(k->isa);
    // this ISA's table builder: bit-identical tables, multipliers and scales
    std::vector<int8_t> tables2(tables.size(), 55);
    std::vector<uint8_t> mults2(mults.size(), 55);
    std::vector<float> ts2(ts.size(), -3.0f);
    const LutTables lt2{tables2.data(), mults2.data(), ts2.data()};
    k->lut_tables(*L, x.data(), v.cols, n_tok, lt2, 0, bmid);
    k->lut_tables(*L, x.data(), v.cols, n_tok, lt2, bmid, L->n_blocks);
    REQUIRE(tables2 == tables);
    REQUIRE(mults2 == mults);
    REQUIRE(std::memcmp(ts2.data(), ts.data(), ts.size() * sizeof(float)) == 0);
    std::vector<float> y(ref.size(), -2.0f);
    const int64_t tmid = L->n_tiles / 2;
    k->lut_matmul(*L, lt, n_tok, y.data(), v.rows, 0, tmid);
    k->lut_matmul(*L, lt, n_tok, y.data(), v.rows, tmid, L->n_tiles);
    REQUIRE(std::memcmp(y.data(), ref.data(), y.size() * sizeof(float)) == 0);
  }
}

}  // namespace

namespace {

// Per-tensor codebooks at bits [bits0, bits1] x scale blocks sbs x odd shapes (f16 or bf16
// scales), one random weight each, handed to f.
template <class F>
void for_each_lut_weight(int bits0, int bits1, std::initializer_list<int64_t> sbs, uint64_t seed, F&& f) {
  for (int bits = bits0; bits <= bits1; ++bits)
    for (int64_t sb : sbs)
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 32}, {33, 64}, {70, 100}, {64, 257}, {5, 1100}, {200, 96}}) {
        CAPTURE(bits);
        CAPTURE(sb);
        CAPTURE(rows);
        CAPTURE(cols);
        const DType sc = (seed % 3 == 0) ? DType::kBF16 : DType::kF16;
        f(make_weight(DType::kKmq, bits, CodebookScope::kTensor, rows, cols, 0, sb, DType::kF32, sc, seed++));
      }
}

}  // namespace

TEST_CASE("kernels: LUT path, bits 1-4 x scale blocks x odd shapes x token counts, every ISA bit-identical") {
  for_each_lut_weight(1, 4, {0, 32, 64, 128, 256}, 500, [](const RandomWeight& w) {
    for (int64_t n_tok : {1, 3, 6})  // 1, 3: the two-tile decode kernel; 6: the 4-token kernel and a remainder
      check_lut(w, n_tok, 1e-3);
  });
}

// The int8 product of lut.h (3-4 bits): every ISA bit-identical to lut_q8_matmul_ref, and
// the reference within int8 error of the exact product.
namespace {

void check_lut_q8(const RandomWeight& w, int64_t n_tok, double max_nmse) {
  const auto& v = w.v;
  auto L = pack_lut(v);
  REQUIRE(lut_q8_supported(*L));
  const int64_t nc = L->n_chunks;
  auto x = test::random_floats(size_t(n_tok * v.cols), 11 + n_tok + v.cols);
  std::vector<int8_t> xq(size_t(n_tok * nc * 32), 99);
  std::vector<float> xs(size_t(n_tok * nc), -1.0f);
  std::vector<int32_t> corr(size_t(n_tok * nc), 77);
  const LutQ8Acts a{xq.data(), xs.data(), corr.data()};
  lut_q8_quantize(*L, x.data(), v.cols, a, 0, n_tok / 2);  // in two token ranges, as the threads do
  lut_q8_quantize(*L, x.data(), v.cols, a, n_tok / 2, n_tok);
  std::vector<uint8_t> scratch(lut_q8_scratch_bytes(*L) + 64);
  uint8_t* sp = scratch.data() + (64 - reinterpret_cast<uintptr_t>(scratch.data()) % 64) % 64;
  std::vector<float> ref(size_t(n_tok * v.rows), -1.0f);
  lut_q8_matmul_ref(*L, a, n_tok, ref.data(), v.rows, 0, L->n_tiles, sp);
  double err, nrm;
  error_vs_exact(w, x, ref, n_tok, err, nrm);
  CHECK_MESSAGE(err / nrm < max_nmse, "int8 product reference nmse ", err / nrm);
  if (std::getenv("KMQ_TEST_VERBOSE"))
    MESSAGE("q8 bits ", v.bits, " sb ", v.scale_block, " rows ", v.rows, " cols ", v.cols, " nmse ", err / nrm);
  CHECK(err > 0);  // int8 operands: an exact result would mean the test is not testing them
  int n_isa = 0;
  for (const Kernels* k : runnable_tables()) {
    if (!k->lut_q8) continue;
    CAPTURE(k->isa);
    ++n_isa;
    std::vector<float> y(ref.size(), -2.0f);
    std::fill(scratch.begin(), scratch.end(), uint8_t(0xa5));  // no state kept from the reference
    const int64_t tmid = L->n_tiles / 2;
    k->lut_q8(*L, a, n_tok, y.data(), v.rows, 0, tmid, sp);
    k->lut_q8(*L, a, n_tok, y.data(), v.rows, tmid, L->n_tiles, sp);
    REQUIRE(std::memcmp(y.data(), ref.data(), y.size() * sizeof(float)) == 0);
  }
#if defined(__x86_64__)
  if (runnable_tables().size() > 1) CHECK(n_isa > 0);  // AVX2 and AVX-512 have the kernel
#else
  (void)n_isa;  // NEON has none yet: the LUT product runs prompts there
#endif
}

}  // namespace

TEST_CASE("kernels: int8 product at 3-4 bits x scale blocks x odd shapes x token counts, every ISA bit-identical") {
  for_each_lut_weight(3, 4, {0, 32, 64, 96, 256}, 900, [](const RandomWeight& w) {
    for (int64_t n_tok : {1, 3, 4, 13})  // the kernels' 8-, 4-, 2- and 1-token passes and tails
      check_lut_q8(w, n_tok, 1e-3);
  });
  auto w2 = make_weight(DType::kKmq, 2, CodebookScope::kTensor, 32, 64, 0, 0, DType::kF32, DType::kF16, 3);
  CHECK_FALSE(lut_q8_supported(*pack_lut(w2.v)));  // 1-2 bits stay on the LUT product
}

TEST_CASE("kernels: LUT path refuses what it cannot compute") {
  auto row = make_weight(DType::kKmq, 2, CodebookScope::kRow, 4, 64, 0, 64, DType::kF16, DType::kF16, 1);
  CHECK_FALSE(lut_supported(row.v));
  auto odd = make_weight(DType::kKmq, 2, CodebookScope::kTensor, 4, 96, 0, 48, DType::kF32, DType::kF16, 2);
  CHECK_FALSE(lut_supported(odd.v));
  auto f = make_weight(DType::kBF16, 0, CodebookScope::kTensor, 4, 64, 0, 0, DType::kF32, DType::kF16, 3);
  CHECK_FALSE(lut_supported(f.v));
  CHECK_THROWS_AS(pack_lut(row.v), Error);
}

// Helpers of the CUDA tests: random tensors as TensorRefs with owned storage, moving data
// into a backend through the Backend interface only, and the "is there a GPU" check.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kmq/kmq_file.h"
#include "util/half.h"
#ifdef KMQ_HAVE_CUDA
#include "backend/cuda_backend.h"
#endif

namespace kmq::test {

// True when a CUDA backend can be made; otherwise prints why the caller skips.
inline bool have_gpu() {
#ifdef KMQ_HAVE_CUDA
  std::string why;
  if (cuda_device_count(&why) > 0) return true;
  std::fprintf(stderr, "SKIP: no CUDA device (%s): GPU tests pass without running\n", why.c_str());
  return false;
#else
  std::fprintf(stderr, "SKIP: built without CUDA (KMQ_CUDA=OFF): GPU tests pass without running\n");
  return false;
#endif
}

// A tensor with its own bytes. Quantized: random indices, sorted random codebooks
// (exactly representable in their dtype), positive random scales.
struct OwnedTensor {
  TensorRef ref;
  std::vector<uint8_t> data, codebooks, scales;
};

inline void put16(std::vector<uint8_t>& v, uint16_t h) {
  v.push_back(uint8_t(h & 0xff));
  v.push_back(uint8_t(h >> 8));
}

inline OwnedTensor random_tensor(const std::string& name, DType dtype, int64_t rows, int64_t cols, uint64_t seed,
                                 int bits = 4, CodebookScope scope = CodebookScope::kTensor, int64_t group = 64,
                                 int64_t sb = 64, DType cb_dtype = DType::kF32, DType sc_dtype = DType::kF16,
                                 float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  OwnedTensor o;
  TensorRef& t = o.ref;
  t.name = name;
  t.dtype = dtype;
  t.ndim = cols == 1 ? 1 : 2;
  t.rows = rows;
  t.cols = cols;
  if (dtype != DType::kKmq) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float x = nd(rng);
      if (dtype == DType::kF32) {
        const auto* b = reinterpret_cast<const uint8_t*>(&x);
        o.data.insert(o.data.end(), b, b + 4);
      } else {
        put16(o.data, dtype == DType::kF16 ? f32_to_f16(x) : f32_to_bf16(x));
      }
    }
    t.data = o.data.data();
    t.file_size = o.data.size();
    return o;
  }
  t.bits = bits;
  t.scope = scope;
  t.group_size = scope == CodebookScope::kGroup ? group : 0;
  t.scale_block = sb;
  t.codebook_dtype = cb_dtype;
  t.scale_dtype = sc_dtype;
  const int64_t k = int64_t(1) << bits, row_bytes = (cols * bits + 7) / 8;
  o.data.resize(size_t(rows * row_bytes));
  for (auto& b : o.data) b = uint8_t(rng());
  if ((cols * bits) % 8)  // padding bits of each row are zero, as the writer leaves them
    for (int64_t r = 0; r < rows; ++r) o.data[size_t(r * row_bytes + row_bytes - 1)] &= uint8_t((1u << ((cols * bits) % 8)) - 1u);
  const int64_t n_cb = scope == CodebookScope::kTensor ? 1 : scope == CodebookScope::kRow ? rows
                                                                                         : rows * ((cols + group - 1) / group);
  for (int64_t c = 0; c < n_cb; ++c) {
    std::vector<float> v(static_cast<size_t>(k));
    for (auto& x : v) x = nd(rng);
    std::sort(v.begin(), v.end());
    for (float x : v) {
      if (cb_dtype == DType::kF16) put16(o.codebooks, f32_to_f16(x));
      else o.codebooks.insert(o.codebooks.end(), reinterpret_cast<uint8_t*>(&x), reinterpret_cast<uint8_t*>(&x) + 4);
    }
  }
  const int64_t n_sb = sb ? (cols + sb - 1) / sb : 0;
  for (int64_t i = 0; i < rows * n_sb; ++i) {
    const float s = 0.05f + std::abs(nd(rng)) * 0.1f;
    put16(o.scales, sc_dtype == DType::kF16 ? f32_to_f16(s) : f32_to_bf16(s));
  }
  t.data = o.data.data();
  t.codebooks = o.codebooks.data();
  t.scales = sb ? o.scales.data() : nullptr;
  t.file_size = o.data.size() + o.codebooks.size() + o.scales.size();
  return o;
}

// Puts host rows into a backend buffer: uploads them as an f32 "embedding" and embeds
// rows 0..n_rows-1 (the Backend interface has no host-to-device copy of its own).
inline Buf put_rows(Backend& b, const std::vector<float>& host, int64_t n_rows, int64_t width,
                    std::vector<std::unique_ptr<OwnedTensor>>& keep) {
  auto o = std::make_unique<OwnedTensor>();
  o->data.resize(host.size() * 4);
  std::memcpy(o->data.data(), host.data(), o->data.size());
  o->ref.name = "rows";
  o->ref.dtype = DType::kF32;
  o->ref.rows = n_rows;
  o->ref.cols = width;
  o->ref.data = o->data.data();
  const WeightId id = b.upload(o->ref);
  keep.push_back(std::move(o));
  Buf buf = b.alloc(n_rows * width);
  std::vector<int32_t> ids(static_cast<size_t>(n_rows));
  for (int64_t i = 0; i < n_rows; ++i) ids[size_t(i)] = int32_t(i);
  b.embed(buf, id, ids.data(), n_rows);
  return buf;
}

inline std::vector<float> get(Backend& b, Buf x, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  b.to_host(v.data(), x, n);
  return v;
}

inline double nmse(const std::vector<float>& got, const std::vector<float>& want) {
  double e = 0, r = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return 1e30;
    e += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    r += double(want[i]) * want[i];
  }
  return r > 0 ? e / r : e;
}

}  // namespace kmq::test

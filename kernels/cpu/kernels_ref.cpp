// Scalar reference kernels: the specification of every CPU kernel. Written for clarity,
// with 8 independent accumulators in dot products so the compiler can vectorize them
// without reassociating (results are the same for any target).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/kernel_util.h"
#include "kernels/cpu/kernels.h"
#include "util/half.h"

namespace kmq::cpu {
namespace {

void dequant_row_ref(const WeightView& w, int64_t r, float* out) {
  const int64_t cols = w.cols;
  if (w.dtype != DType::kKmq) {
    if (w.dtype == DType::kF32) {
      std::memcpy(out, static_cast<const float*>(w.data) + r * cols, size_t(cols) * 4);
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + r * cols;
      if (w.dtype == DType::kBF16)
        for (int64_t j = 0; j < cols; ++j) out[j] = bf16_to_f32(src[j]);
      else
        for (int64_t j = 0; j < cols; ++j) out[j] = f16_to_f32(src[j]);
    }
    return;
  }
  const int bits = w.bits;
  const int64_t k = int64_t(1) << bits;
  const int64_t row_bytes = (cols * bits + 7) / 8;
  const uint8_t* idx = static_cast<const uint8_t*>(w.data) + r * row_bytes;
  const int64_t n_groups = w.scope == CodebookScope::kGroup ? (cols + w.group_size - 1) / w.group_size : 0;
  const int64_t n_sb = w.scale_block ? (cols + w.scale_block - 1) / w.scale_block : 0;
  // Walk the row in segments over which both the codebook and the scale are constant;
  // in each, table[c] = codebook[c] * scale (the same product as codebook[idx] * scale).
  float table[16];
  int64_t j = 0;
  while (j < cols) {
    int64_t end = cols;
    int64_t cb = 0;
    if (w.scope == CodebookScope::kRow) cb = r;
    if (w.scope == CodebookScope::kGroup) {
      cb = r * n_groups + j / w.group_size;
      end = std::min(end, (j / w.group_size + 1) * w.group_size);
    }
    float scale = 1.0f;
    if (w.scale_block) {
      scale = load_value(w.scales, w.scale_dtype, r * n_sb + j / w.scale_block);
      end = std::min(end, (j / w.scale_block + 1) * w.scale_block);
    }
    for (int64_t c = 0; c < k; ++c) {
      const float v = load_value(w.codebooks, w.codebook_dtype, cb * k + c);
      table[c] = w.scale_block ? v * scale : v;
    }
    for (; j < end; ++j) out[j] = table[index_at(idx, j, bits)];
  }
}

float dot_ref(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void matmul_ref(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                int64_t r0, int64_t r1, float* scratch) {
  // Reconstruct each row once, then dot it with every token: the weight is read once
  // per call whatever n_tok is.
  for (int64_t r = r0; r < r1; ++r) {
    dequant_row_ref(w, r, scratch);
    for (int64_t t = 0; t < n_tok; ++t) y[t * ldy + r] = dot_ref(scratch, x + t * ldx, w.cols);
  }
}

void axpy_ref(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void rmsnorm_ref(float* out, const float* x, const float* w, int64_t n, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * (w ? w[i] : 1.0f);
}

void softmax_ref(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void swiglu_ref(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace

const Kernels& kernels_ref() {
  static const Kernels k{"scalar", dequant_row_ref, matmul_ref, dot_ref, axpy_ref,
                         rmsnorm_ref, softmax_ref, swiglu_ref, nullptr, nullptr, nullptr};
  return k;
}

}  // namespace kmq::cpu

// k-means quantization of a weight matrix: b-bit indices into codebooks of 2^b centroids,
// with a codebook per tensor, per row or per group, and optional block scales.
//
// Reconstruction (the definition every kernel implements):
//   w[r][j] = codebook(r, j)[idx[r][j]] * scale[r][j / scale_block]   (scale = 1 if none)
//   codebook(r, j) = codebooks[c * 2^bits ...], c = 0 (tensor) | r (row) |
//                    r * ceil(cols / group_size) + j / group_size (group)
// Index layout: each row is a little-endian bit stream of cols*bits bits, index j at bit
// offset j*bits (LSB first, may straddle bytes for bits = 3), padded to a whole byte:
//   row_bytes = ceil(cols * bits / 8); indices.size() == rows * row_bytes.
#pragma once
#include <cstdint>
#include <vector>

#include "kmq/types.h"

namespace kmq {

struct QuantSpec {
  int bits = 4;                               // 1..4
  CodebookScope scope = CodebookScope::kTensor;
  int64_t group_size = 64;                    // weights per codebook when scope = kGroup
  int64_t scale_block = 64;                   // weights per scale along a row; 0 = no scales
  ScaleMode scale_mode = ScaleMode::kAbsMax;  // ignored when scale_block = 0
  DType codebook_dtype = DType::kF32;         // kF32 or kF16 storage of centroids
  DType scale_dtype = DType::kF16;            // kF16 or kBF16 storage of scales
  int64_t exact_max = 4096;  // groups up to this many weights get exact DP k-means
  int lloyd_iters = 30;      // Lloyd refinement passes for larger groups (see kmeans_1d)
  uint64_t seed = 0x6b6d71;  // passed to kmeans_1d; output is deterministic for a seed
  int threads = 1;           // >= 1; output is bit-identical for any thread count
  const float* importance = nullptr;  // optional per-input-column weights (length cols)
  // Alternating least-squares passes after the fit (0 = none): each pass refits every block
  // scale, then every centroid, to minimise the (importance-)weighted squared error of the
  // reconstruction given the assignment, and reassigns. Never increases the weighted error
  // beyond the rounding of scales and centroids to their storage dtypes.
  int ls_iters = 0;
};

struct QuantizedTensor {
  int bits = 0;
  CodebookScope scope = CodebookScope::kTensor;
  int64_t group_size = 0;   // meaningful for kGroup
  int64_t scale_block = 0;  // 0 = no scales
  int64_t rows = 0, cols = 0;
  DType codebook_dtype = DType::kF32;
  DType scale_dtype = DType::kF16;
  std::vector<uint8_t> indices;  // rows * row_bytes()
  std::vector<float> codebooks;  // n_codebooks() * 2^bits, values exactly representable in codebook_dtype
  std::vector<float> scales;     // rows * n_scale_blocks(), exactly representable in scale_dtype

  int64_t row_bytes() const { return (cols * bits + 7) / 8; }
  int64_t n_codebooks() const;
  int64_t n_scale_blocks() const { return scale_block ? (cols + scale_block - 1) / scale_block : 0; }
  // Bits per weight as stored: indices + codebooks + scales, over rows*cols.
  double bits_per_weight() const;
};

struct QuantStats {
  double mse = 0;   // mean squared error of the reconstruction
  double nmse = 0;  // mse / mean(w^2)
};

// Quantize w (rows x cols, row-major). Throws kmq::Error on bad specs.
QuantizedTensor quantize(const float* w, int64_t rows, int64_t cols, const QuantSpec& spec);
// Reference reconstruction of row r into out[cols].
void dequantize_row(const QuantizedTensor& q, int64_t r, float* out);
QuantStats quant_error(const float* w, const QuantizedTensor& q);

// Output-aware quantization of one matrix (GPTQ with k-means codebooks). Minimises
//   E = sum_r (w'_r - t_r)^T (H + damp * mean(diag H) * I) (w'_r - t_r)
// over the reconstruction w' of the format (indices, block scales, centroids), where t is
// the target (rows x cols) and H = sum over calibration tokens of x x^T (cols x cols, row-
// major, symmetric positive semi-definite): E is the squared error of the layer's outputs
// on those inputs. Starts from quantize(t, spec) with importance diag(H); then `rounds`
// times: indices column by column with the error of each column fed back into the columns
// after it (GPTQ: the inverse Hessian's Cholesky factor), block scales and centroids
// refitted by exact least squares in that metric (each rounded to its storage dtype,
// codebooks re-sorted). Returns the best state seen (E never above the plain fit's). Rows
// are independent and reductions are in row order: bit-identical for any thread count.
struct HessianOptions {
  int rounds = 2;       // >= 1
  double damp = 0.1;    // relative ridge on H (GPTQ's percdamp; 0.01 overfits 2048 tokens)
};
struct HessianReport {
  double err_plain = 0;  // E of quantize(t, spec)
  double err_final = 0;  // E of the result
  double err_ref = 0;    // t^T H t summed over rows (E of an all-zero matrix), for scale
};
QuantizedTensor quantize_hessian(const float* target, int64_t rows, int64_t cols, const double* H,
                                 const QuantSpec& spec, const HessianOptions& opts,
                                 HessianReport* report = nullptr);

// In-place Cholesky factorisation of the n x n row-major symmetric positive definite a:
// the lower triangle becomes L with a = L L^T (the upper triangle is left as it was).
// Returns false if a pivot is not positive (a not positive definite).
bool cholesky_lower(std::vector<double>& a, int64_t n);

// Lossless encoding of a checkpoint trained with fake quantization (ParetoQ-style uniform
// levels with a per-row scale, or any scheme where every row takes at most 2^max_bits
// distinct values): a per-row codebook holding exactly each row's values (f16 when they are
// all exactly representable in f16, else f32), no scales, bits = ceil(log2(most distinct
// values in a row)) (at least 1). Returns false, leaving *out alone, when some row has more
// than 2^max_bits distinct values (it stops at the first such row, so an ordinary float
// checkpoint costs almost nothing). Reconstruction equals w exactly.
bool quantize_exact_levels(const float* w, int64_t rows, int64_t cols, int max_bits, QuantizedTensor* out);

// Pack / unpack one row's indices (bit stream as above).
void pack_indices(const uint8_t* idx, int64_t n, int bits, uint8_t* out);
uint8_t unpack_index(const uint8_t* row, int64_t j, int bits);

// 1-D k-means on values x (optionally weighted) into k sorted centroids.
// Exact (dynamic programming over sorted values) when n <= exact_max, else the large-n
// method: exact DP over a fine histogram of the values, refined by at most lloyd_iters
// Lloyd passes over the real values (within ~1e-4 of the exact SSE; src/quant/
// kmeans_hist.cpp). Both are deterministic; seed is unused and kept for the interface.
// centroids.size() == k on return (duplicates allowed when the data has fewer than k
// distinct values). Throws kmq::Error on non-finite values, negative or non-finite
// weights, k < 1. Zero-weight points are ignored; all weights zero fits unweighted.
std::vector<float> kmeans_1d(const float* x, const float* weights, int64_t n, int k,
                             int64_t exact_max, int lloyd_iters, uint64_t seed);

// Lloyd's algorithm with k-means++ seeding (deterministic for a seed), at most iters
// passes: the classic large-group method, kept as a reference for kmeans_1d.
std::vector<float> kmeans_1d_lloyd(const float* x, const float* weights, int64_t n, int k,
                                   int iters, uint64_t seed);

}  // namespace kmq

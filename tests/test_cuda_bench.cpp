// GPU benchmarks (not a test: runs only with KMQ_CUDA_BENCH=8b, or =tiny for a quick
// check of the harness; prints a table and, with KMQ_CUDA_BENCH_OUT=FILE, appends it there;
// KMQ_CUDA_BENCH_PART=shapes or =model runs one half; KMQ_CUDA_BENCH_MODES="A=1,B=0;C=0"
// repeats the batch-1 decode of each model once per ';'-separated mode
// with those variables set, e.g. KMQ_CUDA_PDL=0;KMQ_CUDA_FUSE=0, to split a gain up).
//  1. device bandwidth: a read kernel and a copy kernel (16-byte loads, 2 GiB).
//  2. per-shape matmuls through the backend on the llama-3.1-8b shapes: GEMV at 4.25,
//     2.25, 1.25 bits per weight; the n=512 tensor-core path at 4.25 bits against raw
//     cuBLAS bf16 GEMMs of the same shapes (and kmq's own bf16-weight path).
//  3. whole-model: synthetic llama-3.1-8b-shaped .kmq files (random indices, codebooks,
//     scales; embedding and output at 4 bits as the converter does) loaded on the GPU:
//     batch-1 decode tokens/s and achieved GB/s (with and without CUDA graphs), pp512,
//     batched decode at 1, 8, 32, 128 sequences (Model::decode_batch).
#include <doctest/doctest.h>

#ifndef KMQ_HAVE_CUDA
TEST_CASE("cuda bench (KMQ_CUDA_BENCH=8b|tiny)") { MESSAGE("SKIP: built without CUDA (KMQ_CUDA=OFF)"); }
#else
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fmt/format.h>
#include <fstream>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cuda_test_util.h"
#include "kernels/cuda/ops.cuh"
#include "kmq/kmq_file.h"
#include "kmq/model.h"
#include "test_util.h"

using namespace kmq;
using Clock = std::chrono::steady_clock;

namespace {

std::string g_report;
void say(const std::string& s) {
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
  g_report += s + "\n";
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Shape {
  const char* name;
  int64_t rows, cols, per_layer;
};

ModelConfig config_of(bool tiny) {
  ModelConfig c;
  c.name = tiny ? "synthetic-tiny" : "synthetic llama-3.1-8b";
  c.n_vocab = tiny ? 1000 : 128256;
  c.dim = tiny ? 256 : 4096;
  c.n_layers = tiny ? 2 : 32;
  c.n_heads = tiny ? 4 : 32;
  c.n_kv_heads = tiny ? 2 : 8;
  c.head_dim = c.dim / c.n_heads;
  c.ffn_dim = tiny ? 768 : 14336;
  c.max_seq = tiny ? 1024 : 131072;
  c.norm_eps = 1e-5f;
  c.rope_theta = 500000.0f;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0f;
  c.rope_scaling.low_freq_factor = 1.0f;
  c.rope_scaling.high_freq_factor = 4.0f;
  c.rope_scaling.original_max_position = 8192;
  c.bos_id = 1;
  c.eos_id = 2;
  return c;
}

TokenizerData tokenizer_of(int64_t n_vocab) {
  TokenizerData t;
  t.kind = TokenizerKind::kBpe;
  t.pre_tokenizer = "llama3";
  for (int64_t i = 0; i < n_vocab; ++i) {
    t.tokens.push_back(i < 256 ? std::string(1, char(i)) : fmt::format("tok{}", i));
    t.types.push_back(TokenType::kNormal);
  }
  t.bos_id = 1;
  t.eos_id = 2;
  return t;
}

// Fast deterministic bytes (splitmix64).
void fill_random(std::vector<uint8_t>& v, uint64_t seed) {
  uint64_t s = seed;
  size_t i = 0;
  for (; i + 8 <= v.size(); i += 8) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(&v[i], &z, 8);
  }
  for (; i < v.size(); ++i) v[i] = uint8_t(i * 131 + seed);
}

QuantizedTensor random_q(int64_t rows, int64_t cols, int bits, uint64_t seed) {
  QuantizedTensor q;
  q.bits = bits;
  q.scope = CodebookScope::kTensor;
  q.scale_block = 64;
  q.rows = rows;
  q.cols = cols;
  q.codebook_dtype = DType::kF32;
  q.scale_dtype = DType::kF16;
  q.indices.resize(size_t(rows * q.row_bytes()));
  fill_random(q.indices, seed);
  const int k = 1 << bits;
  for (int i = 0; i < k; ++i) q.codebooks.push_back(-1.0f + 2.0f * float(i) / float(k - 1 > 0 ? k - 1 : 1));
  q.scales.assign(size_t(rows * q.n_scale_blocks()), 0.0f);
  for (size_t i = 0; i < q.scales.size(); ++i) q.scales[i] = 0.001953125f * float(1 + (i * 7919) % 16);  // exact in f16
  return q;
}

// Writes a synthetic model: layers at `bits`, embedding/output at max(bits, 4).
void write_model(const std::filesystem::path& path, const ModelConfig& c, int bits) {
  KmqWriter w(path, c, tokenizer_of(c.n_vocab));
  const int eb = std::max(bits, 4);
  const std::vector<float> ones(size_t(c.dim), 1.0f);
  uint64_t seed = 1;
  w.add_quantized("token_embd", random_q(c.n_vocab, c.dim, eb, seed++));
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    w.add_float(p + "attn_norm", DType::kF32, {c.dim}, ones.data());
    w.add_quantized(p + "attn_q", random_q(q_dim, c.dim, bits, seed++));
    w.add_quantized(p + "attn_k", random_q(kv_dim, c.dim, bits, seed++));
    w.add_quantized(p + "attn_v", random_q(kv_dim, c.dim, bits, seed++));
    w.add_quantized(p + "attn_output", random_q(c.dim, q_dim, bits, seed++));
    w.add_float(p + "ffn_norm", DType::kF32, {c.dim}, ones.data());
    w.add_quantized(p + "ffn_gate", random_q(c.ffn_dim, c.dim, bits, seed++));
    w.add_quantized(p + "ffn_up", random_q(c.ffn_dim, c.dim, bits, seed++));
    w.add_quantized(p + "ffn_down", random_q(c.dim, c.ffn_dim, bits, seed++));
  }
  w.add_float("output_norm", DType::kF32, {c.dim}, ones.data());
  w.add_quantized("output", random_q(c.n_vocab, c.dim, eb, seed++));
  w.finish();
}

// Bytes (and weights) a decode step reads: every tensor but the embedding (of which it
// reads one row).
double bytes_per_token(const Model& m, double* weights = nullptr) {
  double b = 0, n = 0;
  for (const auto& t : m.file().tensors())
    if (t.name != "token_embd") b += double(t.file_size), n += double(t.rows * t.cols);
  if (weights) *weights = n;
  return b;
}

struct Bandwidth {
  double read = 0, copy = 0;
};

Bandwidth measure_bandwidth() {
  const int64_t n = int64_t(1) << 29;  // 2 GiB of floats
  float *a = nullptr, *b = nullptr, *sums = nullptr;
  KMQ_CUDA_CHECK(cudaMalloc(&a, size_t(n) * 4));
  KMQ_CUDA_CHECK(cudaMalloc(&b, size_t(n) * 2));
  KMQ_CUDA_CHECK(cudaMalloc(&sums, 4096 * 4));
  KMQ_CUDA_CHECK(cudaMemset(a, 0x3c, size_t(n) * 4));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  auto time_ms = [&](auto&& f) {
    std::vector<double> v;
    for (int i = 0; i < 12; ++i) {
      cudaEventRecord(e0);
      f();
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      if (i >= 2) v.push_back(ms);
    }
    return median(v);
  };
  Bandwidth bw;
  const double rms = time_ms([&] { cuda::read_probe_cuda(a, n, sums, nullptr); });
  bw.read = double(n) * 4 / (rms * 1e-3) / 1e9;
  const int64_t nc = n / 2;  // copy 1 GiB into 1 GiB
  const double cms = time_ms([&] { cuda::copy_probe_cuda(b, a, nc, nullptr); });
  bw.copy = double(nc) * 4 * 2 / (cms * 1e-3) / 1e9;
  const double mms = time_ms([&] { cudaMemcpyAsync(b, a, size_t(nc) * 4, cudaMemcpyDeviceToDevice); });
  say(fmt::format("bandwidth: read kernel {:.0f} GB/s, copy kernel {:.0f} GB/s (read+write), cudaMemcpy D2D {:.0f} GB/s",
                  bw.read, bw.copy, double(nc) * 8 / (mms * 1e-3) / 1e9));
  cudaFree(a);
  cudaFree(b);
  cudaFree(sums);
  return bw;
}

// Times `reps` matmuls of n_tok tokens through the backend, rotating over copies of the
// weight so that L2 does not hold them; returns seconds per matmul.
double time_matmul(Backend& b, std::vector<WeightId>& ws, int64_t rows, int64_t cols, int64_t n_tok, int reps) {
  std::vector<std::unique_ptr<test::OwnedTensor>> keep;
  const auto x = test::random_floats(size_t(n_tok * cols), 5);
  Buf xb = test::put_rows(b, x, n_tok, cols, keep);
  Buf yb = b.alloc(n_tok * rows);
  float sink;
  std::vector<double> runs;
  for (int it = 0; it < 4; ++it) {
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) b.matmul(yb, ws[size_t(i) % ws.size()], xb, n_tok);
    b.to_host(&sink, yb, 1);
    if (it >= 1) runs.push_back(seconds_since(t0) / reps);
  }
  return median(runs);
}

double cublas_bf16_seconds(cublasHandle_t h, int64_t rows, int64_t cols, int64_t n) {
  void *a, *x, *y;
  KMQ_CUDA_CHECK(cudaMalloc(&a, size_t(rows * cols) * 2));
  KMQ_CUDA_CHECK(cudaMalloc(&x, size_t(n * cols) * 2));
  KMQ_CUDA_CHECK(cudaMalloc(&y, size_t(n * rows) * 4));
  cudaMemset(a, 0x3c, size_t(rows * cols) * 2);  // 0x3c3c: bf16 ~0.0115, not zero
  cudaMemset(x, 0x3c, size_t(n * cols) * 2);
  const float one = 1, zero = 0;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> v;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0);
    cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), int(n), int(cols), &one, a, CUDA_R_16BF, int(cols), x,
                 CUDA_R_16BF, int(cols), &zero, y, CUDA_R_32F, int(rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 2) v.push_back(ms * 1e-3);
  }
  cudaFree(a);
  cudaFree(x);
  cudaFree(y);
  return median(v);
}

void bench_shapes(const ModelConfig& c, const Bandwidth& bw) {
  const std::vector<Shape> shapes = {{"attn_q/attn_output", c.dim, c.dim, 2},
                                     {"attn_k/attn_v", c.n_kv_heads * c.head_dim, c.dim, 2},
                                     {"ffn_gate/ffn_up", c.ffn_dim, c.dim, 2},
                                     {"ffn_down", c.dim, c.ffn_dim, 1},
                                     {"output", c.n_vocab, c.dim, 0}};
  auto gpu = make_backend(BackendOptions{"cuda", 0});
  say("\nGEMV (1 token) per shape, weights rotated over >= 64 MiB of copies (L2 is 50 MB):");
  say("| shape | bits/w | us | GB/s | % of read bw |");
  say("|---|---|---|---|---|");
  for (int bits : {4, 2, 1}) {
    for (const auto& s : shapes) {
      auto t = test::random_tensor("w", DType::kKmq, s.rows, s.cols, 9, bits, CodebookScope::kTensor, 64, 64);
      const double bytes = double(t.ref.file_size);
      std::vector<WeightId> ws;
      const int copies = int(std::clamp<double>(std::ceil(64.0 * (1 << 20) / bytes), 1, 64));
      for (int i = 0; i < copies; ++i) ws.push_back(gpu->upload(t.ref));
      const double sec = time_matmul(*gpu, ws, s.rows, s.cols, 1, 100);
      const double gbs = bytes / sec / 1e9;
      say(fmt::format("| {} [{}x{}] | {:.2f} | {:.1f} | {:.0f} | {:.0f}% |", s.name, s.rows, s.cols,
                      8 * bytes / double(s.rows * s.cols), sec * 1e6, gbs, 100 * gbs / bw.read));
    }
  }
  cublasHandle_t h;
  cublasCreate(&h);
  say("\nn = 512 tokens per shape (prompt path), microseconds:");
  say("| shape | cuBLAS bf16 | kmq bf16 weights | kmq 4.25 bits | 4.25-bit / cuBLAS bf16 |");
  say("|---|---|---|---|---|");
  double sum_ref = 0, sum_q = 0;
  for (const auto& s : shapes) {
    const double ref = cublas_bf16_seconds(h, s.rows, s.cols, 512);
    auto tq = test::random_tensor("w", DType::kKmq, s.rows, s.cols, 9, 4, CodebookScope::kTensor, 64, 64);
    std::vector<WeightId> wq = {gpu->upload(tq.ref)};
    const double q = time_matmul(*gpu, wq, s.rows, s.cols, 512, 5);
    double bf = 0;
    if (s.rows * s.cols <= (int64_t(1) << 27)) {
      auto tb = test::random_tensor("w", DType::kBF16, s.rows, s.cols, 9);
      std::vector<WeightId> wb = {gpu->upload(tb.ref)};
      bf = time_matmul(*gpu, wb, s.rows, s.cols, 512, 5);
    }
    const int64_t mult = s.per_layer ? s.per_layer * c.n_layers : 1;
    sum_ref += ref * double(mult);
    sum_q += q * double(mult);
    say(fmt::format("| {} [{}x{}] | {:.0f} | {} | {:.0f} | {:.0f}% |", s.name, s.rows, s.cols, ref * 1e6,
                    bf > 0 ? fmt::format("{:.0f}", bf * 1e6) : std::string("-"), q * 1e6, 100 * ref / q));
  }
  say(fmt::format("all matmuls of one 512-token prompt: cuBLAS bf16 {:.1f} ms, kmq 4.25 bits {:.1f} ms: {:.0f}% of "
                  "the bf16 speed",
                  sum_ref * 1e3, sum_q * 1e3, 100 * sum_ref / sum_q));
  cublasDestroy(h);
}

// KMQ_CUDA_BENCH=profile: a few single matmuls (no graphs) of the q, k, ffn_down and
// output shapes at every bit width, for a profiler (ncu -k regex:gemv) to look at.
void profile_shapes(const ModelConfig& c) {
  auto gpu = make_backend(BackendOptions{"cuda", 0});
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {c.dim, c.dim}, {c.n_kv_heads * c.head_dim, c.dim}, {c.dim, c.ffn_dim}, {c.n_vocab, c.dim}};
  for (int bits : {4, 2, 1})
    for (auto [rows, cols] : shapes) {
      auto t = test::random_tensor("w", DType::kKmq, rows, cols, 9, bits, CodebookScope::kTensor, 64, 64);
      std::vector<WeightId> ws = {gpu->upload(t.ref)};
      const double sec = time_matmul(*gpu, ws, rows, cols, 1, 1);
      say(fmt::format("profile: {} bits [{}x{}] {:.1f} us", bits, rows, cols, sec * 1e6));
    }
}

// "A=1,B=0" -> {{"A", "1"}, {"B", "0"}}
std::vector<std::pair<std::string, std::string>> parse_mode(const std::string& m) {
  std::vector<std::pair<std::string, std::string>> r;
  size_t i = 0;
  while (i < m.size()) {
    size_t j = m.find(',', i);
    if (j == std::string::npos) j = m.size();
    const std::string kv = m.substr(i, j - i);
    if (const size_t e = kv.find('='); e != std::string::npos) r.emplace_back(kv.substr(0, e), kv.substr(e + 1));
    i = j + 1;
  }
  return r;
}

std::vector<std::string> bench_modes() {
  std::vector<std::string> modes;
  const char* e = std::getenv("KMQ_CUDA_BENCH_MODES");
  const std::string s = e ? e : "";
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(';', i);
    if (j == std::string::npos) j = s.size();
    if (j > i) modes.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return modes;
}

// Seconds per batch-1 decode token (16-token prompt, 4 warm-up tokens, n timed).
double decode_seconds(Model& m, const ModelConfig& c, int n) {
  auto s = m.new_session(1024);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 16; ++i) prompt.push_back(int32_t(1000 + i * 37) % int32_t(c.n_vocab));
  std::vector<float> logits;
  s->eval(prompt, &logits, 1);
  for (int i = 0; i < 4; ++i) s->eval({int32_t(i + 5)}, &logits, 1);
  const auto t1 = Clock::now();
  for (int i = 0; i < n; ++i) s->eval({int32_t(i * 13 + 7)}, &logits, 1);
  return seconds_since(t1) / n;
}

void bench_model(const ModelConfig& c, const Bandwidth& bw, int bits, bool tiny) {
  const auto path = test::temp_path(fmt::format("synthetic-q{}.kmq", bits));
  const auto t0 = Clock::now();
  write_model(path, c, bits);
  const std::string device = tiny && !test::have_gpu() ? "cpu" : "cuda";
  for (const char* graphs : {"1", "0"}) {
    if (graphs[0] == '0' && bits != 1) continue;  // the launch-bound case: fewest bytes per token
    ::setenv("KMQ_CUDA_GRAPHS", graphs, 1);
    auto m = Model::load(path, ModelOptions{device, 0});
    double n_weights = 0;
    const double bytes = bytes_per_token(*m, &n_weights);
    if (graphs[0] == '1')
      say(fmt::format("\n{}-bit model (file written in {:.1f} s): {:.2f} GB read per token ({:.2f} bits/weight "
                      "over the weights read), backend {}",
                      bits, seconds_since(t0), bytes / 1e9, 8 * bytes / n_weights, m->backend_name()));
    std::vector<float> logits;
    const int n = tiny ? 8 : 64;
    const double sec = decode_seconds(*m, c, n);
    say(fmt::format("batch-1 decode, CUDA graphs {}: {:.1f} tok/s, {:.0f} GB/s = {:.0f}% of measured read bandwidth",
                    graphs[0] == '1' ? "on " : "off", 1 / sec, bytes / sec / 1e9, 100 * bytes / sec / 1e9 / bw.read));
    if (graphs[0] == '1') {
      // the same decode with other backend settings (KMQ_CUDA_BENCH_MODES), the model reloaded
      for (const std::string& mode : bench_modes()) {
        const auto kv = parse_mode(mode);
        for (const auto& [k, v] : kv) ::setenv(k.c_str(), v.c_str(), 1);
        {
          auto m2 = Model::load(path, ModelOptions{device, 0});
          const double s2 = decode_seconds(*m2, c, n);
          say(fmt::format("batch-1 decode, {}: {:.1f} tok/s, {:.0f}% of read bandwidth ({})", mode, 1 / s2,
                          100 * bytes / s2 / 1e9 / bw.read, m2->backend_name()));
        }
        for (const auto& [k, v] : kv) ::unsetenv(k.c_str());
      }
    }
    if (graphs[0] != '1' || bits != 4) continue;
    // prompt processing: 512 tokens into a fresh context (after one warm-up)
    std::vector<int32_t> p512;
    for (int i = 0; i < 512; ++i) p512.push_back(int32_t(100 + i * 7) % int32_t(c.n_vocab));
    std::vector<double> runs;
    for (int it = 0; it < 3; ++it) {
      auto s2 = m->new_session(1024);
      const auto t2 = Clock::now();
      s2->eval(p512, &logits, 1);
      runs.push_back(seconds_since(t2));
    }
    say(fmt::format("pp512: {:.0f} tok/s ({:.1f} ms per 512-token prompt)", 512 / median(runs), median(runs) * 1e3));
    // batched decode
    for (int64_t batch : {1, 8, 32, 128}) {
      std::vector<std::unique_ptr<Session>> ss;
      std::vector<Session*> sp;
      for (int64_t i = 0; i < batch; ++i) {
        ss.push_back(m->new_session(64));
        ss.back()->eval({1, int32_t(10 + i)}, nullptr, 0);
        sp.push_back(ss.back().get());
      }
      std::vector<int32_t> toks(size_t(batch), 42);
      m->decode_batch(sp, toks, &logits);  // warm-up (and graph capture)
      m->decode_batch(sp, toks, &logits);
      const int steps = 8;
      const auto t3 = Clock::now();
      for (int i = 0; i < steps; ++i) m->decode_batch(sp, toks, &logits);
      const double st = seconds_since(t3) / steps;
      say(fmt::format("batched decode, {:3d} sequences: {:.0f} tok/s ({:.1f} ms per step)", batch, double(batch) / st,
                      st * 1e3));
    }
  }
  ::unsetenv("KMQ_CUDA_GRAPHS");
  std::filesystem::remove(path);
}

}  // namespace

TEST_CASE("cuda bench (KMQ_CUDA_BENCH=8b|tiny)") {
  const char* mode = std::getenv("KMQ_CUDA_BENCH");
  if (!mode || !*mode) {
    MESSAGE("set KMQ_CUDA_BENCH=8b (or tiny) to run the GPU benchmarks");
    return;
  }
  if (std::string(mode) == "profile") {
    if (test::have_gpu()) profile_shapes(config_of(false));
    return;
  }
  const bool tiny = std::string(mode) == "tiny";
  // KMQ_CUDA_BENCH_PART=shapes|model: only the per-shape or only the whole-model part
  const char* part_env = std::getenv("KMQ_CUDA_BENCH_PART");
  const std::string part = part_env ? part_env : "all";
  const ModelConfig c = config_of(tiny);
  Bandwidth bw{1, 1};
  if (test::have_gpu()) {
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    say(fmt::format("device: {} ({} SMs, {:.1f} GiB, L2 {} MB)", prop.name, prop.multiProcessorCount,
                    double(prop.totalGlobalMem) / double(1 << 30), prop.l2CacheSize >> 20));
    bw = measure_bandwidth();
    if (part != "model") bench_shapes(c, bw);
  }
  if (part != "shapes")
    for (int bits : {4, 1, 2}) bench_model(c, bw, bits, tiny);
  if (const char* out = std::getenv("KMQ_CUDA_BENCH_OUT"); out && *out) std::ofstream(out, std::ios::app) << g_report;
}
#endif  // KMQ_HAVE_CUDA

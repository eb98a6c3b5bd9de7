// The CUDA backend: weights uploaded once to device memory (quantized indices repacked
// into the fast layout of kernels/cuda/weight.cuh, codebooks to f32), activations and KV
// cache in device memory, every op a kernel on one stream.
//
// Ops are recorded, not launched, until the model reads a result (to_host). A recorded
// step is a list of launches plus a signature (op, buffers, sizes; positions and token ids
// go to a pinned parameter block that kernels read from device memory). When a step's
// signature equals the previous step's (decode: every token after the first), it is
// captured once as a CUDA graph and replayed: one launch per token instead of ~10 per
// layer. Matmuls of <= 8 tokens use the GEMV kernels; larger ones dequantize row slabs to
// f16 and multiply on the tensor cores through cuBLAS.
//
// Decode-path fusions (recorded ops are rewritten as they arrive; KMQ_CUDA_FUSE=0 turns
// this off): rmsnorm followed by an integer-kernel matmul of its output becomes one
// launch that normalises x while staging it; consecutive matmuls of the same input (q, k,
// v; gate, up) become one launch; matmul + add of its output into a residual, and gate/up
// + swiglu, move into that launch's epilogue; rope(q), rope(k) + attention's KV store
// become one kernel. Every op still writes every buffer it is specified to write.
// Kernels of consecutive ops are launched with programmatic dependent launch on sm_90+
// (KMQ_CUDA_PDL=0 turns it off; kernels/cuda/common.cuh).
#include "backend/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <unordered_map>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "kernels/cpu/kernels.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/ops.cuh"
#include "kmq/error.h"

namespace kmq {
namespace {

using cuda::CudaWeight;

void blas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Error(fmt::format("cuBLAS error {} in {}", int(s), what));
}

constexpr int64_t kGemvMaxTok = 8;           // larger batches take the tensor-core path
constexpr int64_t kSlabElems = 8 << 20;      // KMQ_CUDA_SLABS=small: 16 MiB f16 slabs
constexpr int64_t kBigSlabElems = 64 << 20;  // default: at most 128 MiB (two of them)
constexpr int64_t kParamCap = 1 << 20;       // int32 parameter slots per step
constexpr size_t kBlasWorkspace = 32 << 20;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    KMQ_CUDA_CHECK(cudaSetDevice(device_));
    KMQ_CUDA_CHECK(cudaGetDeviceProperties(&prop_, device_));
    if (prop_.major < 8)
      throw Error(fmt::format("--device cuda: {} is sm_{}{}; kmq's CUDA kernels need compute capability 8.0 or newer "
                              "(this build: sm_80, sm_89, sm_90)",
                              prop_.name, prop_.major, prop_.minor));
    cuda::check_kernel_image();
    KMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    blas_check(cublasCreate(&blas_), "cublasCreate");
    blas_check(cublasSetStream(blas_, stream_), "cublasSetStream");
    blas_ws_ = dev_alloc(kBlasWorkspace, "the cuBLAS workspace");
    blas_check(cublasSetWorkspace(blas_, blas_ws_, kBlasWorkspace), "cublasSetWorkspace");
    KMQ_CUDA_CHECK(cudaMallocHost(&params_host_, kParamCap * sizeof(int32_t)));
    params_dev_ = static_cast<int32_t*>(dev_alloc(kParamCap * sizeof(int32_t), "the parameter block"));
    const char* g = std::getenv("KMQ_CUDA_GRAPHS");
    use_graphs_ = !(g && std::string(g) == "0");
    const char* sl = std::getenv("KMQ_CUDA_SLABS");
    big_slabs_ = !(sl && std::string(sl) == "small");
    const char* pd = std::getenv("KMQ_CUDA_PDL");
    pdl_ = prop_.major >= 9 && !(pd && std::string(pd) == "0");
    const char* fu = std::getenv("KMQ_CUDA_FUSE");
    fuse_ = !(fu && std::string(fu) == "0");
    q8_mode_ = cuda::q8_mode();
    // KMQ_CUDA_PDL_TRIGGER=early|staged|late, for all bit widths or as "1:late,4:early"
    if (const char* tr = std::getenv("KMQ_CUDA_PDL_TRIGGER"); tr && *tr) {
      const std::string v = tr;
      auto mode = [](const std::string& m) { return m == "late" ? 2 : m == "staged" ? 1 : 0; };
      if (v.find(':') == std::string::npos) {
        for (int& t : trigger_) t = mode(v);
      } else {
        for (size_t i = 0; i < v.size();) {
          size_t j = v.find(',', i);
          if (j == std::string::npos) j = v.size();
          const std::string kv = v.substr(i, j - i);
          if (kv.size() > 2 && kv[1] == ':' && kv[0] >= '1' && kv[0] <= '4') trigger_[kv[0] - '0'] = mode(kv.substr(2));
          i = j + 1;
        }
      }
    }
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (auto& [sig, exec] : graphs_) cudaGraphExecDestroy(exec);
    if (blas_) cublasDestroy(blas_);
    for (void* p : allocations_) cudaFree(p);
    if (params_host_) cudaFreeHost(params_host_);
    for (cudaEvent_t e : {ev_fork_, ev_deq_[0], ev_deq_[1], ev_gemm_[0], ev_gemm_[1]})
      if (e) cudaEventDestroy(e);
    if (side_) cudaStreamDestroy(side_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string name() const override {
    static const char* const kQ8Names[] = {"f32", "q8fast", "q8", "q8lite"};
    return fmt::format("cuda ({}, sm_{}{}, {:.1f} GiB, graphs {}, pdl {}, fusion {}, gemv {})", prop_.name, prop_.major,
                       prop_.minor, double(prop_.totalGlobalMem) / double(1 << 30), use_graphs_ ? "on" : "off",
                       pdl_ ? "on" : "off", fuse_ ? "on" : "off", kQ8Names[std::clamp(q8_mode_, 0, 3)]);
  }
  int n_threads() const override { return 1; }

  WeightId upload(const TensorRef& t) override {
    Weight W;
    W.name = t.name;
    CudaWeight& w = W.w;
    w.rows = t.rows;
    w.cols = t.cols;
    if (t.cols == 1 || t.ndim == 1) {  // norm gains, biases: f32 vectors
      const int64_t n = t.rows * t.cols;
      std::vector<float> f(static_cast<size_t>(n));
      cpu::WeightView v = view_of(t);
      v.rows = 1;
      v.cols = n;
      cpu::kernels_ref().dequant_row(v, 0, f.data());
      float* d = static_cast<float*>(dev_alloc(size_t(n) * 4, "tensor '" + t.name + "'"));
      KMQ_CUDA_CHECK(cudaMemcpy(d, f.data(), size_t(n) * 4, cudaMemcpyHostToDevice));
      w.dtype = cuda::kDtF32;
      w.data = d;
      W.vec = d;
    } else if (t.dtype != DType::kKmq) {
      const size_t bytes = size_t(t.rows * t.cols) * dtype_size(t.dtype);
      void* d = dev_alloc(bytes, "tensor '" + t.name + "'");
      KMQ_CUDA_CHECK(cudaMemcpy(d, t.data, bytes, cudaMemcpyHostToDevice));
      w.dtype = int(t.dtype);
      w.data = d;
    } else {
      upload_kmq(t, w);
    }
    weights_.push_back(std::move(W));
    return WeightId{int32_t(weights_.size() - 1)};
  }

  Buf alloc(int64_t n) override {
    float* p = static_cast<float*>(dev_alloc(size_t(std::max<int64_t>(n, 1)) * 4, "an activation buffer"));
    KMQ_CUDA_CHECK(cudaMemsetAsync(p, 0, size_t(std::max<int64_t>(n, 1)) * 4, stream_));
    KMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return Buf{p, n};
  }

  void set_rope(const RopeParams& rope) override {
    rope_hd_ = rope.head_dim;
    inv_freq_ = static_cast<float*>(dev_alloc(std::max<size_t>(rope.inv_freq.size(), 1) * 4, "RoPE frequencies"));
    KMQ_CUDA_CHECK(cudaMemcpy(inv_freq_, rope.inv_freq.data(), rope.inv_freq.size() * 4, cudaMemcpyHostToDevice));
  }

  void embed(Buf out, WeightId emb, const int32_t* tokens, int64_t n_tok) override {
    const CudaWeight w = weights_.at(emb.id).w;
    for (int64_t t = 0; t < n_tok; ++t)
      if (tokens[t] < 0 || tokens[t] >= w.rows)
        throw Error(fmt::format("token id {} outside the vocabulary of {}", tokens[t], w.rows));
    need(out, n_tok * w.cols, "embed");
    const int32_t* toks = params(tokens, n_tok);
    const bool pdl = take_pdl(true);
    record({1, n_tok, emb.id}, {out.p}, [=, st = stream_] { cuda::embed_cuda(out.p, w, toks, n_tok, st, pdl); });
  }

  void rmsnorm(Buf out, Buf x, WeightId g, int64_t n_tok, int64_t dim, float eps) override {
    const float* gv = vec_of(g, dim);
    need(out, n_tok * dim, "rmsnorm");
    need(x, n_tok * dim, "rmsnorm");
    const bool pdl = take_pdl(true);
    record({2, n_tok, dim, g.id}, {out.p, x.p},
           [=, st = stream_] { cuda::rmsnorm_cuda(out.p, x.p, gv, n_tok, dim, eps, st, pdl); });
    last_norm_ = NormRec{out.p, x.p, gv, n_tok, dim, eps, pdl};
  }

  void matmul(Buf y, WeightId wid, Buf x, int64_t n_tok) override {
    const CudaWeight w = weights_.at(wid.id).w;
    need(x, n_tok * w.cols, "matmul input");
    need(y, n_tok * w.rows, "matmul output");
    cudaStream_t st = stream_;
    if (n_tok <= kGemvMaxTok) {
      // q8lite: the output layer (its own or the tied embedding) keeps the default precision
      const std::string& wname = weights_.at(wid.id).name;
      const int planes = q8_mode_ == cuda::kQ8X1C1 && (wname == "output" || wname == "token_embd") ? int(cuda::kQ8X2) : q8_mode_;
      if (planes != cuda::kQ8Off && cuda::gemv_q8_supported(w, x.p, w.cols)) {
        if (fuse_ && fuse_matmul(y, w, wid.id, x, n_tok, planes)) return;
        const bool pdl = take_pdl(true);
        cuda::Q8Job j;
        j.w[0] = w;
        j.y[0] = y.p;
        j.ldy[0] = w.rows;
        j.x = x.p;
        j.ldx = w.cols;
        j.n_tok = n_tok;
        record({3, n_tok, wid.id}, {y.p, x.p}, job_fn(j, planes, pdl));
        last_job_ = JobRec{j, x.p, planes, pdl};
        return;
      }
      const bool pdl = take_pdl(true);
      if (cuda::gemv_kmq_supported(w, x.p, w.cols))
        record({3, n_tok, wid.id}, {y.p, x.p},
               [=] { cuda::gemv_kmq_cuda(w, x.p, w.cols, n_tok, y.p, w.rows, st, pdl); });
      else if (cuda::gemv_half_supported(w, x.p, w.cols))
        record({4, n_tok, wid.id}, {y.p, x.p},
               [=] { cuda::gemv_half_cuda(w, x.p, w.cols, n_tok, y.p, w.rows, st, pdl); });
      else
        record({5, n_tok, wid.id}, {y.p, x.p},
               [=] { cuda::gemv_any_cuda(w, x.p, w.cols, n_tok, y.p, w.rows, st, pdl); });
      return;
    }
    gemm(y, w, wid.id, x, n_tok);
  }

  void add_bias(Buf y, WeightId bias, int64_t n_tok, int64_t width) override {
    const float* b = vec_of(bias, width);
    need(y, n_tok * width, "add_bias");
    const bool pdl = take_pdl(true);
    record({6, n_tok, width, bias.id}, {y.p},
           [=, st = stream_] { cuda::add_bias_cuda(y.p, b, n_tok, width, st, pdl); });
  }

  void rope(Buf x, int64_t n_tok, int64_t n_heads, int64_t pos0) override {
    need(x, n_tok * n_heads * rope_hd_, "rope");
    const int32_t p = int32_t(pos0);
    const int32_t* pos = params(&p, 1);
    const int64_t hd = rope_hd_;
    const float* inv = inv_freq_;
    const bool pdl = take_pdl(true);
    std::vector<RopeRec> ropes = std::move(last_ropes_);
    record({7, n_tok, n_heads}, {x.p},
           [=, st = stream_] { cuda::rope_cuda(x.p, n_tok, n_heads, hd, inv, pos, st, pdl); });
    last_ropes_ = std::move(ropes);
    last_ropes_.push_back(RopeRec{x.p, n_tok, n_heads, p, pdl});
  }

  void attention(Buf out, Buf q, Buf k, Buf v, Buf k_cache, Buf v_cache, int64_t n_tok, int64_t pos0,
                 int64_t n_heads, int64_t n_kv, int64_t hd, int64_t window) override {
    const int64_t kv_dim = n_kv * hd, cap = k_cache.n / kv_dim;
    if (hd > 256 || n_kv <= 0 || n_heads % n_kv != 0)
      throw Error(fmt::format("cuda attention: head_dim {} (at most 256) with {} heads over {} kv heads is not supported",
                              hd, n_heads, n_kv));
    if (pos0 < 0 || pos0 + n_tok > cap || v_cache.n < cap * kv_dim)
      throw Error(fmt::format("cuda attention: positions [{}, {}) outside a cache of {}", pos0, pos0 + n_tok, cap));
    need(q, n_tok * n_heads * hd, "attention q");
    need(out, n_tok * n_heads * hd, "attention out");
    need(k, n_tok * kv_dim, "attention k");
    need(v, n_tok * kv_dim, "attention v");
    int n_splits = 1;
    if (n_tok <= 4) {  // decode: split the context so that enough blocks run (the kernel
      // cuts the actual context, not the capacity, into n_splits chunks)
      const int64_t want = (2 * int64_t(prop_.multiProcessorCount) + n_heads * n_tok - 1) / (n_heads * n_tok);
      n_splits = int(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, cap / 64)));
    }
    float* partial = nullptr;
    unsigned* counters = nullptr;
    if (n_splits > 1) {
      partial = scratch_partial(n_tok * n_heads * n_splits * (hd + 2));
      counters = scratch_counters(n_tok * n_heads);
    }
    const int32_t p = int32_t(pos0);
    const int32_t* pos = params(&p, 1);  // first: a flush here ends the fusion below
    // rope(q), rope(k) just before, at this position: one kernel rotates and stores
    bool rope_fused = false;
    bool pdl = false;
    if (fuse_ && last_ropes_.size() >= 2 && rope_hd_ == hd) {
      const RopeRec& rq = last_ropes_[last_ropes_.size() - 2];
      const RopeRec& rk = last_ropes_.back();
      if (rq.x == q.p && rk.x == k.p && rq.n_tok == n_tok && rk.n_tok == n_tok && rq.n_heads == n_heads &&
          rk.n_heads == n_kv && rq.pos0 == p && rk.pos0 == p && !overlaps(q.p, n_tok * n_heads * hd, k.p, n_tok * kv_dim) &&
          !overlaps(v.p, n_tok * kv_dim, k.p, n_tok * kv_dim)) {
        queue_.pop_back();
        queue_.pop_back();
        rope_fused = true;
        pdl = rq.pdl;  // the first launch follows what preceded the two ropes
      }
    }
    if (!rope_fused) pdl = take_pdl(true);
    const float* inv = inv_freq_;
    const bool pdl_next = pdl_;  // the attention kernel follows our own first kernel
    record({8, n_tok, n_heads, n_kv, hd, window, n_splits, rope_fused}, {out.p, q.p, k.p, v.p, k_cache.p, v_cache.p},
           [=, st = stream_] {
             if (rope_fused)
               cuda::rope_store_cuda(q.p, k.p, v.p, k_cache.p, v_cache.p, n_tok, n_heads, n_kv, hd, inv, pos, st, pdl);
             else
               cuda::store_kv_cuda(k_cache.p, v_cache.p, k.p, v.p, n_tok, kv_dim, pos, st, pdl);
             cuda::attention_cuda(out.p, q.p, k_cache.p, v_cache.p, n_tok, n_heads, n_kv, hd, window, pos, n_splits,
                                  partial, counters, st, pdl_next);
           });
  }

  void swiglu(Buf out, Buf gate, Buf up, int64_t n) override {
    need(out, n, "swiglu");
    if (fuse_ && fuse_swiglu(out, gate, up, n)) return;
    const bool pdl = take_pdl(true);
    record({9, n}, {out.p, gate.p, up.p},
           [=, st = stream_] { cuda::swiglu_cuda(out.p, gate.p, up.p, n, st, pdl); });
  }

  void add(Buf y, Buf x, int64_t n) override {
    need(y, n, "add");
    if (fuse_ && fuse_add(y, x, n)) return;
    const bool pdl = take_pdl(true);
    record({10, n}, {y.p, x.p}, [=, st = stream_] { cuda::add_cuda(y.p, x.p, n, st, pdl); });
  }

  void copy_rows(Buf dst, Buf src, int64_t n) override {
    need(dst, n, "copy_rows");
    take_pdl(false);
    record({11, n}, {dst.p, src.p}, [=, st = stream_] {
      KMQ_CUDA_CHECK(cudaMemcpyAsync(dst.p, src.p, size_t(n) * 4, cudaMemcpyDeviceToDevice, st));
    });
  }

  void to_host(float* dst, Buf src, int64_t n) override {
    flush();
    KMQ_CUDA_CHECK(cudaMemcpy(dst, src.p, size_t(n) * 4, cudaMemcpyDeviceToHost));
  }

 private:
  struct Weight {
    std::string name;
    CudaWeight w;
    const float* vec = nullptr;  // f32 copy of a vector (norm gain, bias)
  };

  static cpu::WeightView view_of(const TensorRef& t) {
    cpu::WeightView w;
    w.dtype = t.dtype;
    w.rows = t.rows;
    w.cols = t.cols;
    w.data = t.data;
    w.bits = t.bits;
    w.scope = t.scope;
    w.group_size = t.group_size;
    w.scale_block = t.scale_block;
    w.codebook_dtype = t.codebook_dtype;
    w.scale_dtype = t.scale_dtype;
    w.codebooks = t.codebooks;
    w.scales = t.scales;
    return w;
  }

  void upload_kmq(const TensorRef& t, CudaWeight& w) {
    const std::string what = "tensor '" + t.name + "'";
    const int bits = t.bits, k = 1 << bits;
    w.dtype = cuda::kDtKmq;
    w.bits = bits;
    w.scope = int(t.scope);
    w.group_size = t.group_size;
    w.scale_block = t.scale_block;
    w.scale_bf16 = t.scale_dtype == DType::kBF16;
    const int64_t n_cb = w.scope == cuda::kScopeTensor ? 1 : w.scope == cuda::kScopeRow ? t.rows : t.rows * w.n_groups();
    std::vector<float> cb(size_t(n_cb * k));
    for (size_t i = 0; i < cb.size(); ++i) {
      if (t.codebook_dtype == DType::kF32) {
        std::memcpy(&cb[i], static_cast<const char*>(t.codebooks) + i * 4, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, static_cast<const char*>(t.codebooks) + i * 2, 2);
        cpu::WeightView v;  // f16 -> f32 through the reference (one code path for the format)
        v.dtype = DType::kF16;
        v.rows = 1;
        v.cols = 1;
        v.data = &h;
        cpu::kernels_ref().dequant_row(v, 0, &cb[i]);
      }
    }
    float* dcb = static_cast<float*>(dev_alloc(cb.size() * 4, what + " codebooks"));
    KMQ_CUDA_CHECK(cudaMemcpy(dcb, cb.data(), cb.size() * 4, cudaMemcpyHostToDevice));
    w.codebooks = dcb;
    if (t.scale_block) {
      const size_t n = size_t(t.rows * w.n_scale_blocks()) * 2;
      void* d = dev_alloc(n, what + " scales");
      KMQ_CUDA_CHECK(cudaMemcpy(d, t.scales, n, cudaMemcpyHostToDevice));
      w.scales = static_cast<const uint16_t*>(d);
    }
    const int64_t row_bytes = (t.cols * bits + 7) / 8;
    const uint8_t* src = static_cast<const uint8_t*>(t.data);
    const bool fast = (t.scale_block == 0 || t.scale_block % 32 == 0) &&
                      (w.scope != cuda::kScopeGroup || t.group_size % 32 == 0);
    if (!fast) {
      const size_t n = size_t(t.rows * row_bytes);
      void* d = dev_alloc(n + 1, what + " indices");
      KMQ_CUDA_CHECK(cudaMemcpy(d, src, n, cudaMemcpyHostToDevice));
      KMQ_CUDA_CHECK(cudaMemset(static_cast<char*>(d) + n, 0, 1));
      w.data = d;
      return;
    }
    w.row_words = (t.cols + 127) / 128 * 4 * bits;
    const size_t n = size_t(t.rows * w.row_words) * 4;
    void* d = dev_alloc(n, what + " indices");
    if (bits != 3 && t.cols % 128 == 0) {  // the file's stream is the fast layout already
      KMQ_CUDA_CHECK(cudaMemcpy(d, src, n, cudaMemcpyHostToDevice));
    } else {
      std::vector<uint32_t> rp(size_t(w.row_words) * 1024);  // 1024 rows at a time
      for (int64_t r0 = 0; r0 < t.rows; r0 += 1024) {
        const int64_t nr = std::min<int64_t>(1024, t.rows - r0);
        std::fill(rp.begin(), rp.end(), 0u);
        for (int64_t r = 0; r < nr; ++r) {
          const uint8_t* row = src + (r0 + r) * row_bytes;
          uint32_t* out = rp.data() + r * w.row_words;
          for (int64_t j = 0; j < t.cols; ++j) {
            const int64_t bit = j * bits;
            unsigned v = row[bit >> 3];
            if ((bit & 7) + bits > 8) v |= unsigned(row[(bit >> 3) + 1]) << 8;
            const unsigned idx = (v >> (bit & 7)) & unsigned(k - 1);
            uint32_t* s = out + (j >> 5) * bits;
            const unsigned jj = unsigned(j & 31);
            if (bits == 3) {
              s[jj >> 4] |= (idx & 3u) << (2 * (jj & 15));
              s[2] |= (idx >> 2) << jj;
            } else {
              s[(jj * bits) >> 5] |= idx << ((jj * bits) & 31);
            }
          }
        }
        KMQ_CUDA_CHECK(cudaMemcpy(static_cast<uint32_t*>(d) + r0 * w.row_words, rp.data(),
                                  size_t(nr * w.row_words) * 4, cudaMemcpyHostToDevice));
      }
    }
    w.data = d;
  }

  void* dev_alloc(size_t bytes, const std::string& what) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      constexpr double kMiB = 1024.0 * 1024.0;
      throw Error(fmt::format("out of GPU memory: {} needs {:.1f} MiB, {} has {:.1f} MiB free of {:.1f} MiB "
                              "(kmq holds {:.1f} MiB); use a smaller model or context, or --device cpu",
                              what, double(bytes) / kMiB, prop_.name, double(free_b) / kMiB, double(total_b) / kMiB,
                              double(held_) / kMiB));
    }
    KMQ_CUDA_CHECK(e);
    allocations_.push_back(p);
    held_ += bytes;
    return p;
  }

  const float* vec_of(WeightId id, int64_t n) const {
    const Weight& w = weights_.at(id.id);
    if (!w.vec || w.w.rows * w.w.cols < n)
      throw Error(fmt::format("cuda backend: '{}' is not a vector of {} values", w.name, n));
    return w.vec;
  }

  static void need(const Buf& b, int64_t n, const char* what) {
    if (b.n < n) throw Error(fmt::format("cuda backend: {} needs {} floats, the buffer holds {}", what, n, b.n));
  }

  // Copies n ints into the parameter block of the step; returns their device address.
  const int32_t* params(const int32_t* v, int64_t n) {
    if (n > kParamCap) throw Error("cuda backend: too many parameters in one step");
    if (n_params_ + n > kParamCap) flush();
    std::memcpy(params_host_ + n_params_, v, size_t(n) * 4);
    const int32_t* d = params_dev_ + n_params_;
    n_params_ += n;
    return d;
  }

  unsigned* scratch_counters(int64_t n) {
    if (counters_n_ < n) {
      flush();
      counters_ = static_cast<unsigned*>(dev_alloc(size_t(n) * 4, "attention counters"));
      KMQ_CUDA_CHECK(cudaMemset(counters_, 0, size_t(n) * 4));
      counters_n_ = n;
    }
    return counters_;
  }

  static bool overlaps(const void* a, int64_t na, const void* b, int64_t nb) {  // float ranges
    const float *pa = static_cast<const float*>(a), *pb = static_cast<const float*>(b);
    return pa < pb + nb && pb < pa + na;
  }

  // PDL for the next op's first launch: only when the op before it ended with a kernel of
  // ours (not cuBLAS, a copy or an event) and the device has it (sm_90+).
  bool take_pdl(bool kernel_op) {
    const bool r = pdl_ && prev_kernel_;
    prev_kernel_ = kernel_op;
    return r;
  }

  struct NormRec {  // the queue's last op is this rmsnorm
    float* out;
    const float* x;
    const float* g;
    int64_t n_tok, dim;
    float eps;
    bool pdl;
  };
  struct JobRec {  // the queue's last op is this integer-kernel job
    cuda::Q8Job job;
    const float* x;  // the input the model passed (the norm's output when the norm is fused)
    int planes;
    bool pdl;
  };
  struct RopeRec {  // the queue ends with these rope ops
    float* x;
    int64_t n_tok, n_heads;
    int32_t pos0;
    bool pdl;
  };

  std::function<void()> job_fn(cuda::Q8Job j, int planes, bool pdl) const {
    j.trigger = trigger_[std::clamp(j.w[0].bits, 0, 4)];
    return [=, st = stream_] { cuda::gemv_q8_job_cuda(j, planes, st, pdl); };
  }

  // Everything the job reads, as float ranges: does [p, p + n) touch any of it?
  bool touches_inputs(const JobRec& r, const void* p, int64_t n) const {
    const cuda::Q8Job& j = r.job;
    const int64_t cols = j.w[0].cols;
    if (overlaps(p, n, j.x, j.n_tok * j.ldx) || overlaps(p, n, r.x, j.n_tok * cols)) return true;
    if (j.norm_out && overlaps(p, n, j.norm_out, j.n_tok * cols)) return true;
    return false;
  }
  bool touches_outputs(const JobRec& r, const void* p, int64_t n) const {
    const cuda::Q8Job& j = r.job;
    for (int i = 0; i < j.n_w; ++i)
      if (overlaps(p, n, j.y[i], j.n_tok * j.ldy[i])) return true;
    return false;
  }

  // matmul after rmsnorm of its input, or after a matmul of the same input: one launch.
  bool fuse_matmul(Buf y, const CudaWeight& w, int32_t wid, Buf x, int64_t n_tok, int planes) {
    const int64_t ny = n_tok * w.rows;
    if (last_job_) {
      JobRec& r = *last_job_;
      cuda::Q8Job& j = r.job;
      if (r.x == x.p && j.n_tok == n_tok && j.n_w < 3 && !j.resid && !j.swiglu_out && r.planes == planes &&
          cuda::gemv_q8_same_geometry(j.w[0], w) && !touches_inputs(r, y.p, ny) && !touches_outputs(r, y.p, ny)) {
        j.w[j.n_w] = w;
        j.y[j.n_w] = y.p;
        j.ldy[j.n_w] = w.rows;
        ++j.n_w;
        queue_.back() = job_fn(j, planes, r.pdl);
        append_sig({3, n_tok, wid}, {y.p, x.p});
        return true;
      }
    }
    if (last_norm_) {
      const NormRec n = *last_norm_;
      if (n.out == x.p && n.n_tok == n_tok && n.dim == w.cols && cuda::gemv_q8_supported(w, n.x, n.dim) &&
          !overlaps(n.out, n_tok * n.dim, n.x, n_tok * n.dim) && !overlaps(y.p, ny, n.x, n_tok * n.dim) &&
          !overlaps(y.p, ny, n.out, n_tok * n.dim) && (reinterpret_cast<uintptr_t>(n.g) & 15u) == 0) {
        cuda::Q8Job j;
        j.w[0] = w;
        j.y[0] = y.p;
        j.ldy[0] = w.rows;
        j.x = n.x;
        j.ldx = n.dim;
        j.n_tok = n_tok;
        j.norm_g = n.g;
        j.norm_eps = n.eps;
        j.norm_out = n.out;
        queue_.back() = job_fn(j, planes, n.pdl);
        append_sig({3, n_tok, wid}, {y.p, x.p});
        last_norm_.reset();
        last_job_ = JobRec{j, x.p, planes, n.pdl};
        return true;
      }
    }
    return false;
  }

  // y += (the last matmul's output): into that matmul's epilogue.
  bool fuse_add(Buf y, Buf x, int64_t n) {
    if (!last_job_) return false;
    JobRec& r = *last_job_;
    cuda::Q8Job& j = r.job;
    if (j.n_w != 1 || j.resid || j.swiglu_out || j.y[0] != x.p || n != j.n_tok * j.w[0].rows ||
        touches_inputs(r, y.p, n) || touches_outputs(r, y.p, n))
      return false;
    j.resid = y.p;
    j.ldr = j.w[0].rows;
    queue_.back() = job_fn(j, r.planes, r.pdl);
    append_sig({10, n}, {y.p, x.p});
    last_job_.reset();
    return true;
  }

  // out = silu(gate) * up of the last job's two outputs: into its epilogue.
  bool fuse_swiglu(Buf out, Buf gate, Buf up, int64_t n) {
    if (!last_job_) return false;
    JobRec& r = *last_job_;
    cuda::Q8Job& j = r.job;
    if (j.n_w != 2 || j.resid || j.swiglu_out || j.w[0].rows != j.w[1].rows || n != j.n_tok * j.w[0].rows) return false;
    const bool fwd = j.y[0] == gate.p && j.y[1] == up.p, rev = j.y[1] == gate.p && j.y[0] == up.p;
    if (!(fwd || rev) || touches_inputs(r, out.p, n)) return false;
    if (out.p != gate.p && out.p != up.p && touches_outputs(r, out.p, n)) return false;
    if (rev) {
      std::swap(j.w[0], j.w[1]);
      std::swap(j.y[0], j.y[1]);
      std::swap(j.ldy[0], j.ldy[1]);
    }
    j.swiglu_out = out.p;
    queue_.back() = job_fn(j, r.planes, r.pdl);
    append_sig({9, n}, {out.p, gate.p, up.p});
    last_job_.reset();
    return true;
  }

  float* scratch_partial(int64_t n) {
    if (partial_n_ < n) {
      flush();  // recorded work may use the old buffer
      partial_ = static_cast<float*>(dev_alloc(size_t(n) * 4, "attention scratch"));
      partial_n_ = n;
    }
    return partial_;
  }

  void gemm(Buf y, const CudaWeight& w, int32_t wid, Buf x, int64_t n_tok) {
    const int64_t rows = w.rows, cols = w.cols;
    if (x16_n_ < n_tok * cols) {
      flush();
      x16_ = static_cast<uint16_t*>(dev_alloc(size_t(n_tok * cols) * 2, "f16 activations"));
      x16_n_ = n_tok * cols;
    }
    // Quantized and bf16 weights: dequantized to f16 in row slabs, each multiplied by one
    // cuBLAS GEMM. The slabs are large (whole matrices up to 64M weights), so that the
    // GEMMs fill the GPU (16 MiB slabs left most SMs idle: 576-row slabs for ffn_down), and
    // with two or more slabs (every matrix of >= 8192 rows) slab i+1 is dequantized on a
    // second stream while slab i is multiplied, into the other of two buffers. Measured on
    // an H200: 54% of cuBLAS bf16 on the llama-3.1-8b shapes, against 39% (docs/PERFORMANCE.md).
    // KMQ_CUDA_SLABS=small: the former 16 MiB slabs, one after another on the main stream.
    const bool slab = w.dtype == cuda::kDtKmq || w.dtype == cuda::kDtBF16;
    int64_t slab_rows = std::min(rows, std::max<int64_t>(64, kSlabElems / cols / 64 * 64));
    if (big_slabs_) {
      const int64_t n = std::max<int64_t>((rows * cols + kBigSlabElems - 1) / kBigSlabElems, rows >= 8192 ? 2 : 1);
      slab_rows = std::min(rows, ((rows + n - 1) / n + 63) / 64 * 64);
    }
    const int64_t n_slabs = (rows + slab_rows - 1) / slab_rows;
    const int n_buf = big_slabs_ && n_slabs > 1 ? 2 : 1;
    if (slab && w16_n_ < slab_rows * cols) {
      flush();  // recorded work may use the old buffer
      w16_ = static_cast<uint16_t*>(dev_alloc(size_t(slab_rows * cols) * 2, "f16 weight slab"));
      w16_n_ = slab_rows * cols;
    }
    if (slab && n_buf == 2 && w16b_n_ < slab_rows * cols) {
      flush();
      w16b_ = static_cast<uint16_t*>(dev_alloc(size_t(slab_rows * cols) * 2, "f16 weight slab"));
      w16b_n_ = slab_rows * cols;
    }
    if (slab && n_buf == 2 && !side_) {
      KMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
      for (cudaEvent_t* e : {&ev_fork_, &ev_deq_[0], &ev_deq_[1], &ev_gemm_[0], &ev_gemm_[1]})
        KMQ_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    }
    take_pdl(false);  // cuBLAS and events: the next op waits for all of it
    uint16_t* x16 = x16_;
    uint16_t* wbuf[2] = {w16_, w16b_};
    cublasHandle_t h = blas_;
    cudaStream_t st = stream_, side = side_;
    cudaEvent_t ev_fork = ev_fork_, ev_deq[2] = {ev_deq_[0], ev_deq_[1]}, ev_gemm[2] = {ev_gemm_[0], ev_gemm_[1]};
    record({12, n_tok, wid}, {y.p, x.p}, [=] {
      const float one = 1.0f, zero = 0.0f;
      const int m_tok = int(n_tok), k = int(cols);
      if (w.dtype == cuda::kDtF32) {
        blas_check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), m_tok, k, &one, w.data, CUDA_R_32F, k, x.p,
                                CUDA_R_32F, k, &zero, y.p, CUDA_R_32F, int(rows), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx f32");
        return;
      }
      cuda::f32_to_f16_cuda(x16, x.p, n_tok, cols, cols, st);
      if (!slab) {
        blas_check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), m_tok, k, &one, w.data, CUDA_R_16F, k, x16,
                                CUDA_R_16F, k, &zero, y.p, CUDA_R_32F, int(rows), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx f16");
        return;
      }
      if (n_buf == 2) {  // fork the side stream off the main one (also inside a graph capture)
        KMQ_CUDA_CHECK(cudaEventRecord(ev_fork, st));
        KMQ_CUDA_CHECK(cudaStreamWaitEvent(side, ev_fork, 0));
      }
      for (int64_t i = 0; i < n_slabs; ++i) {
        const int64_t r0 = i * slab_rows, nr = std::min(slab_rows, rows - r0);
        const int b = int(i % n_buf);
        if (n_buf == 2) {
          if (i >= 2) KMQ_CUDA_CHECK(cudaStreamWaitEvent(side, ev_gemm[b], 0));  // buffer b is free again
          cuda::dequant_f16_cuda(w, r0, nr, wbuf[b], side);
          KMQ_CUDA_CHECK(cudaEventRecord(ev_deq[b], side));
          KMQ_CUDA_CHECK(cudaStreamWaitEvent(st, ev_deq[b], 0));  // the last wait joins the side stream
        } else {
          cuda::dequant_f16_cuda(w, r0, nr, wbuf[b], st);
        }
        blas_check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(nr), m_tok, k, &one, wbuf[b], CUDA_R_16F, k, x16,
                                CUDA_R_16F, k, &zero, y.p + r0, CUDA_R_32F, int(rows), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx slab");
        if (n_buf == 2) KMQ_CUDA_CHECK(cudaEventRecord(ev_gemm[b], st));
      }
    });
  }

  // Records one op: its signature (op code and sizes, then buffer addresses) and body.
  void record(std::initializer_list<int64_t> key, std::initializer_list<const void*> ptrs, std::function<void()> fn) {
    append_sig(key, ptrs);
    queue_.push_back(std::move(fn));
    last_norm_.reset();
    last_job_.reset();
    last_ropes_.clear();
  }
  // The signature of an op fused into the queue's last entry.
  void append_sig(std::initializer_list<int64_t> key, std::initializer_list<const void*> ptrs) {
    for (int64_t v : key) sig_.append(reinterpret_cast<const char*>(&v), sizeof v);
    for (const void* p : ptrs) sig_.append(reinterpret_cast<const char*>(&p), sizeof p);
  }

  // Launches the recorded step (as a graph when it repeats) and waits for it.
  void flush() {
    if (queue_.empty()) return;
    if (n_params_)
      KMQ_CUDA_CHECK(cudaMemcpyAsync(params_dev_, params_host_, size_t(n_params_) * 4, cudaMemcpyHostToDevice, stream_));
    bool done = false;
    if (use_graphs_ && queue_.size() >= 8) {
      auto it = graphs_.find(sig_);
      if (it == graphs_.end() && sig_ == last_sig_) it = capture();
      if (it != graphs_.end()) {
        KMQ_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
        done = true;
      }
    }
    if (!done)
      for (auto& f : queue_) f();
    last_sig_ = std::move(sig_);
    sig_.clear();
    queue_.clear();
    n_params_ = 0;
    last_norm_.reset();
    last_job_.reset();
    last_ropes_.clear();
    prev_kernel_ = false;  // the next step starts after a copy (parameters) or a graph
    KMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  std::unordered_map<std::string, cudaGraphExec_t>::iterator capture() {
    if (graphs_.size() >= 8) {
      for (auto& [s, e] : graphs_) cudaGraphExecDestroy(e);
      graphs_.clear();
    }
    cudaGraph_t graph = nullptr;
    KMQ_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      for (auto& f : queue_) f();
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    KMQ_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {  // run eagerly from now on rather than fail
      (void)cudaGetLastError();
      use_graphs_ = false;
      return graphs_.end();
    }
    return graphs_.emplace(sig_, exec).first;
  }

  int device_;
  cudaDeviceProp prop_{};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* blas_ws_ = nullptr;
  std::vector<void*> allocations_;
  size_t held_ = 0;
  std::vector<Weight> weights_;
  int64_t rope_hd_ = 0;
  float* inv_freq_ = nullptr;
  int32_t* params_host_ = nullptr;
  int32_t* params_dev_ = nullptr;
  int64_t n_params_ = 0;
  std::vector<std::function<void()>> queue_;
  std::string sig_, last_sig_;
  std::unordered_map<std::string, cudaGraphExec_t> graphs_;
  bool use_graphs_ = true;
  float* partial_ = nullptr;
  int64_t partial_n_ = 0;
  unsigned* counters_ = nullptr;
  int64_t counters_n_ = 0;
  bool pdl_ = false, fuse_ = true, prev_kernel_ = false;
  int q8_mode_ = cuda::kQ8X1C1;  // KMQ_CUDA_GEMV, read once (cuda::q8_mode)
  // PDL trigger placement of the integer kernel per bit width (Q8Job::trigger): each
  // warp's last step ("late"); measured on an H200 against "early" (after the wait):
  // +1 / +2 / +12% decode at 2.25 / 4.25 / 1.25 bpw (docs/PERFORMANCE.md).
  int trigger_[5] = {2, 2, 2, 2, 2};
  std::optional<NormRec> last_norm_;
  std::optional<JobRec> last_job_;
  std::vector<RopeRec> last_ropes_;
  uint16_t *x16_ = nullptr, *w16_ = nullptr, *w16b_ = nullptr;
  bool big_slabs_ = true;        // false with KMQ_CUDA_SLABS=small
  cudaStream_t side_ = nullptr;  // dequantizes the next slab while the main stream multiplies
  cudaEvent_t ev_fork_ = nullptr, ev_deq_[2] = {}, ev_gemm_[2] = {};
  int64_t x16_n_ = 0, w16_n_ = 0, w16b_n_ = 0;
};

}  // namespace

int cuda_device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = fmt::format("{} ({})", cudaGetErrorName(e), cudaGetErrorString(e));
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device present";
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  std::string why;
  const int n = cuda_device_count(&why);
  if (n == 0) throw Error("--device cuda: no usable CUDA GPU: " + why + " (use --device cpu)");
  int dev = 0;
  if (const char* e = std::getenv("KMQ_CUDA_DEVICE"); e && *e) dev = std::atoi(e);
  if (dev < 0 || dev >= n) throw Error(fmt::format("KMQ_CUDA_DEVICE={} but there are {} CUDA devices", dev, n));
  return std::make_unique<CudaBackend>(dev);
}

}  // namespace kmq

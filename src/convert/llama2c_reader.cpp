// open_llama2c: karpathy's llama2.c checkpoints (legacy header + float32 weights, and the
// version-1 "ak42" export) as a SourceModel, with q/k rows permuted to HF RoPE order.
#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <map>
#include <memory>

#include "convert/source.h"
#include "kmq/error.h"
#include "util/mmap_file.h"

namespace kmq {
namespace {

static_assert(std::endian::native == std::endian::little, "llama2.c files are little-endian");

// Legacy layout:  int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//                 (28 bytes; vocab_size < 0 means a separate classifier wcls at the end), then
//                 float32: token_embd [V, D]; per kind, all layers: rms_att [D], wq [D, D],
//                 wk [KV, D], wv [KV, D], wo [D, D], rms_ffn [D], w1 [H, D], w2 [D, H],
//                 w3 [H, D]; rms_final [D]; freq_cis_real [S, hd/2]; freq_cis_imag [S, hd/2];
//                 wcls [V, D] if not shared.
// Version 1:      uint32 magic 0x616b3432 ("ak42"), int32 version = 1, the 7 int32 params,
//                 uint8 shared_classifier, zero padding to 256 bytes; then float32, per kind
//                 all layers: rms_att, rms_ffn; rms_final; token_embd; wq, wk, wv, wo, w1, w2,
//                 w3; wcls if not shared. No freq_cis tables.
// (Verified on stories260K.bin / stories260K_v1.bin: every tensor is bit-identical.)
constexpr uint32_t kMagicAk42 = 0x616b3432;
constexpr uint64_t kLegacyHeaderBytes = 28;
constexpr uint64_t kV1HeaderBytes = 256;

struct Block {
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // in bytes from the start of the file
  int64_t rope_heads = 0;  // > 0: rows hold this many interleaved-RoPE heads to permute
};

class Layout {
 public:
  Layout(std::string where, uint64_t header) : where_(std::move(where)), cursor_(header) {}

  void add(const std::string& name, std::vector<int64_t> shape, int64_t rope_heads = 0) {
    uint64_t n = 4;
    for (int64_t d : shape) n = mul(n, uint64_t(d));
    blocks_[name] = Block{std::move(shape), cursor_, rope_heads};
    cursor_ = add_u(cursor_, n);
  }
  // Adds blk.{0..n_layers-1}.<kind>.
  void add_layers(int64_t n_layers, const std::string& kind, const std::vector<int64_t>& shape,
                  int64_t rope_heads = 0) {
    for (int64_t l = 0; l < n_layers; ++l) add(fmt::format("blk.{}.{}", l, kind), shape, rope_heads);
  }
  uint64_t end() const { return cursor_; }
  const std::map<std::string, Block>& blocks() const { return blocks_; }

 private:
  uint64_t mul(uint64_t a, uint64_t b) const {
    uint64_t r;
    if (__builtin_mul_overflow(a, b, &r)) throw Error(where_ + ": tensor sizes overflow (corrupt header)");
    return r;
  }
  uint64_t add_u(uint64_t a, uint64_t b) const {
    uint64_t r;
    if (__builtin_add_overflow(a, b, &r)) throw Error(where_ + ": tensor sizes overflow (corrupt header)");
    return r;
  }
  std::string where_;
  uint64_t cursor_;
  std::map<std::string, Block> blocks_;
};

// llama2.c pairs rows (2j, 2j+1) of each head for RoPE; HF pairs (j, j + hd/2).
// New row j = old row 2j, new row hd/2 + j = old row 2j + 1, within each head.
std::vector<float> permute_rope_rows(const std::vector<float>& w, int64_t n_heads, int64_t head_dim,
                                     int64_t cols) {
  std::vector<float> out(w.size());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    const int64_t base = h * head_dim;
    for (int64_t j = 0; j < half; ++j) {
      std::memcpy(&out[size_t((base + j) * cols)], &w[size_t((base + 2 * j) * cols)], size_t(cols) * 4);
      std::memcpy(&out[size_t((base + half + j) * cols)], &w[size_t((base + 2 * j + 1) * cols)],
                  size_t(cols) * 4);
    }
  }
  return out;
}

}  // namespace

SourceModel open_llama2c(const std::filesystem::path& checkpoint, const std::filesystem::path& tokenizer_bin) {
  auto file = std::make_shared<const MappedFile>(checkpoint);
  const std::string where = file->path();
  const uint8_t* p = file->data();
  const uint64_t size = file->size();
  auto i32_at = [&](uint64_t off) {
    int32_t v;
    std::memcpy(&v, p + off, 4);
    return v;
  };

  uint32_t magic = 0;
  if (size >= 4) std::memcpy(&magic, p, 4);
  const bool v1 = magic == kMagicAk42;
  const uint64_t header = v1 ? kV1HeaderBytes : kLegacyHeaderBytes;
  if (size < header)
    throw Error(fmt::format("{}: file size {} is smaller than the {}-byte llama2.c header (truncated?)", where,
                            size, header));
  const uint64_t params_at = v1 ? 8 : 0;
  if (v1 && i32_at(4) != 1)
    throw Error(fmt::format("{}: llama2.c export version {} is not supported (only the legacy format and "
                            "version 1, float32)", where, i32_at(4)));

  ModelConfig c;
  c.arch = "llama";
  c.dim = i32_at(params_at);
  c.ffn_dim = i32_at(params_at + 4);
  c.n_layers = i32_at(params_at + 8);
  c.n_heads = i32_at(params_at + 12);
  c.n_kv_heads = i32_at(params_at + 16);
  const int64_t vocab_field = i32_at(params_at + 20);
  c.max_seq = i32_at(params_at + 24);
  c.n_vocab = vocab_field < 0 ? -vocab_field : vocab_field;  // int64: no overflow at INT32_MIN
  c.tied_embeddings = v1 ? p[params_at + 28] != 0 : vocab_field > 0;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.bos_id = 1;
  c.eos_id = 2;
  c.name = checkpoint.stem().string();
  const std::string hdr = fmt::format("{}: header (dim {}, hidden_dim {}, n_layers {}, n_heads {}, n_kv_heads {}, "
                                      "vocab_size {}, seq_len {})", where, c.dim, c.ffn_dim, c.n_layers, c.n_heads,
                                      c.n_kv_heads, vocab_field, c.max_seq);
  if (c.n_heads <= 0 || c.dim <= 0 || c.dim % c.n_heads != 0)
    throw Error(hdr + ": dim is not a positive multiple of n_heads (corrupt or not a llama2.c checkpoint)");
  c.head_dim = c.dim / c.n_heads;
  try {
    validate_config(c, hdr);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (corrupt or not a llama2.c checkpoint)");
  }

  const int64_t D = c.dim, H = c.ffn_dim, L = c.n_layers, V = c.n_vocab, hd = c.head_dim;
  const int64_t kv = c.n_kv_heads * hd;
  Layout lay(where, header);
  if (!v1) {
    lay.add("token_embd", {V, D});
    lay.add_layers(L, "attn_norm", {D});
    lay.add_layers(L, "attn_q", {D, D}, c.n_heads);
    lay.add_layers(L, "attn_k", {kv, D}, c.n_kv_heads);
    lay.add_layers(L, "attn_v", {kv, D});
    lay.add_layers(L, "attn_output", {D, D});
    lay.add_layers(L, "ffn_norm", {D});
    lay.add_layers(L, "ffn_gate", {H, D});  // w1
    lay.add_layers(L, "ffn_down", {D, H});  // w2
    lay.add_layers(L, "ffn_up", {H, D});    // w3
    lay.add("output_norm", {D});
    lay.add("freq_cis_real", {c.max_seq, hd / 2});  // unused: kmq computes RoPE from theta
    lay.add("freq_cis_imag", {c.max_seq, hd / 2});
  } else {
    lay.add_layers(L, "attn_norm", {D});
    lay.add_layers(L, "ffn_norm", {D});
    lay.add("output_norm", {D});
    lay.add("token_embd", {V, D});
    lay.add_layers(L, "attn_q", {D, D}, c.n_heads);
    lay.add_layers(L, "attn_k", {kv, D}, c.n_kv_heads);
    lay.add_layers(L, "attn_v", {kv, D});
    lay.add_layers(L, "attn_output", {D, D});
    lay.add_layers(L, "ffn_gate", {H, D});
    lay.add_layers(L, "ffn_down", {D, H});
    lay.add_layers(L, "ffn_up", {H, D});
  }
  if (!c.tied_embeddings) lay.add("output", {V, D});
  if (lay.end() != size)
    throw Error(fmt::format("{}: file size {} does not match the expected size {} bytes ({}, {} classifier): "
                            "truncated or wrong format", hdr, size, lay.end(),
                            v1 ? "version 1 export" : "legacy format", c.tied_embeddings ? "shared" : "separate"));

  SourceModel m;
  auto emit = [&](const std::string& name) {
    const Block& b = lay.blocks().at(name);
    SourceTensor t;
    t.name = name;
    t.shape = b.shape;
    t.src_dtype = DType::kF32;
    t.load = [file, b, hd] {
      size_t n = 1;
      for (int64_t d : b.shape) n *= size_t(d);
      std::vector<float> w(n);
      std::memcpy(w.data(), file->data() + b.offset, n * 4);  // in bounds: size checked above
      if (b.rope_heads > 0) w = permute_rope_rows(w, b.rope_heads, hd, b.shape[1]);
      return w;
    };
    m.tensors.push_back(std::move(t));
  };
  emit("token_embd");
  for (int64_t l = 0; l < L; ++l)
    for (const char* kind : {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                             "ffn_up", "ffn_down"})
      emit(fmt::format("blk.{}.{}", l, kind));
  emit("output_norm");
  if (!c.tied_embeddings) emit("output");

  m.tokenizer = load_tokenizer_llama2c(tokenizer_bin, c.n_vocab);
  m.config = c;
  m.description = fmt::format("llama2.c checkpoint ({}, float32, {} classifier)",
                              v1 ? "version 1 \"ak42\" export" : "legacy format",
                              c.tied_embeddings ? "shared" : "separate");
  return m;
}

}  // namespace kmq

// Synthetic models (kmq-convert --synthetic): the tiny preset round-trips (valid file,
// right shapes and schemes, loads and runs), the bytes are a pure function of the seed
// (whatever the thread count), codebooks are sorted, every storage option is honoured;
// and the bench helpers count the bytes a token reads.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>

#include "convert/synthetic.h"
#include "kmq/bench.h"
#include "kmq/kmq_file.h"
#include "kmq/model.h"
#include "test_util.h"
#include "util/half.h"

using namespace kmq;

namespace {

std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::filesystem::path write_tiny(const std::string& name, const ConvertOptions& o, uint64_t seed = 7) {
  const auto path = test::temp_path(name);
  std::filesystem::remove(path);
  SyntheticOptions s;
  s.preset = "tiny";
  s.seed = seed;
  write_synthetic_model(s, path, o);
  return path;
}

float codebook_value(const TensorRef& t, int64_t i) {
  if (t.codebook_dtype == DType::kF32) return static_cast<const float*>(t.codebooks)[i];
  return f16_to_f32(static_cast<const uint16_t*>(t.codebooks)[i]);
}

}  // namespace

TEST_CASE("synthetic presets: real shapes, unknown names listed") {
  const auto& one = find_synthetic_preset("llama-3.2-1b").config;
  CHECK(one.dim == 2048);
  CHECK(one.n_layers == 16);
  CHECK(one.n_heads == 32);
  CHECK(one.n_kv_heads == 8);
  CHECK(one.head_dim == 64);
  CHECK(one.ffn_dim == 8192);
  CHECK(one.n_vocab == 128256);
  CHECK(one.tied_embeddings);
  CHECK(one.rope_scaling.type == "llama3");
  CHECK(one.rope_theta == 500000.0f);
  const auto& eight = find_synthetic_preset("llama-3.1-8b").config;
  CHECK(eight.dim == 4096);
  CHECK(eight.ffn_dim == 14336);
  CHECK(eight.head_dim == 128);
  CHECK(!eight.tied_embeddings);
  const std::string err = test::error_of([] { find_synthetic_preset("llama-9"); });
  CHECK(err.find("unknown synthetic preset 'llama-9'") != std::string::npos);
  CHECK(err.find("llama-3.1-8b") != std::string::npos);
}

TEST_CASE("synthetic tiny: valid file, shapes, schemes, norms, tokenizer; loads and runs") {
  ConvertOptions o;
  o.threads = 2;
  const auto path = write_tiny("synth-tiny.kmq", o);
  KmqFile f(path);
  CHECK(f.verify().empty());
  const auto& c = f.config();
  const auto& want = find_synthetic_preset("tiny").config;
  CHECK(c.dim == want.dim);
  CHECK(c.n_layers == want.n_layers);
  CHECK(c.n_vocab == want.n_vocab);
  CHECK(f.tensors().size() == size_t(3 + 9 * want.n_layers));
  const TensorRef& q = f.get("blk.1.attn_q");
  CHECK(q.rows == c.n_heads * c.head_dim);
  CHECK(q.cols == c.dim);
  CHECK(q.dtype == DType::kKmq);
  CHECK(q.bits == 4);
  CHECK(q.scale_block == 64);
  CHECK(f.get("blk.0.ffn_down").rows == c.dim);
  CHECK(f.get("blk.0.ffn_down").cols == c.ffn_dim);
  CHECK(f.get("blk.0.attn_k").rows == c.n_kv_heads * c.head_dim);
  CHECK(f.get("output").rows == c.n_vocab);
  const TensorRef& norm = f.get("blk.0.ffn_norm");
  CHECK(norm.dtype == DType::kF32);
  const float* g = static_cast<const float*>(norm.data);
  CHECK(std::all_of(g, g + norm.rows, [](float x) { return x == 1.0f; }));
  // absmax codebooks lie in [-1, 1] and are sorted
  for (int64_t i = 0; i + 1 < 16; ++i) CHECK(codebook_value(q, i) <= codebook_value(q, i + 1));
  CHECK(codebook_value(q, 0) >= -1.0f);
  CHECK(codebook_value(q, 15) <= 1.0f);

  auto model = Model::load(path, ModelOptions{"cpu", 1});
  const auto& tok = model->tokenizer();
  const auto ids = tok.encode("hi!", true);
  REQUIRE(ids.size() == 4);
  CHECK(ids[0] == c.bos_id);
  CHECK(ids[1] == 'h');
  CHECK(tok.decode(ids) == "hi!");
  auto s = model->new_session(64);
  std::vector<float> logits;
  s->eval(ids, &logits, 1);
  REQUIRE(logits.size() == size_t(c.n_vocab));
  CHECK(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
  for (int i = 0; i < 4; ++i) {
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    s->eval({next}, &logits, 1);
    CHECK(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
  }
  CHECK(s->n_past() == 8);
}

TEST_CASE("synthetic: bytes depend on the seed only, not on the thread count") {
  ConvertOptions one, two;
  one.threads = 1;
  two.threads = 2;
  const auto a = read_bytes(write_tiny("synth-a.kmq", one, 11));
  const auto b = read_bytes(write_tiny("synth-b.kmq", two, 11));
  const auto c = read_bytes(write_tiny("synth-c.kmq", one, 12));
  CHECK(a.size() > 100000);
  CHECK(a == b);
  CHECK(a != c);
}

TEST_CASE("synthetic: storage options as the real converter applies them") {
  ConvertOptions o;
  o.threads = 2;
  o.quant.bits = 3;  // index rows of 3-bit fields with padding
  o.quant.scope = CodebookScope::kGroup;
  o.quant.group_size = 100;  // a partial last group
  o.quant.scale_block = 0;
  o.quant.scale_mode = ScaleMode::kNone;
  o.embed_type = "bf16";
  const auto path = write_tiny("synth-q3g.kmq", o);
  KmqFile f(path);
  CHECK(f.verify().empty());
  CHECK(f.get("token_embd").dtype == DType::kBF16);
  const TensorRef& out = f.get("output");  // auto: max(bits, 4)
  CHECK(out.dtype == DType::kKmq);
  CHECK(out.bits == 4);
  const TensorRef& up = f.get("blk.0.ffn_up");
  CHECK(up.bits == 3);
  CHECK(up.scope == CodebookScope::kGroup);
  CHECK(up.scale_block == 0);
  CHECK(up.codebook_dtype == DType::kF16);
  const int64_t n_cb = up.rows * ((up.cols + 99) / 100);
  for (int64_t cb = 0; cb < n_cb; cb += 97)
    for (int64_t i = 0; i + 1 < 8; ++i) CHECK(codebook_value(up, cb * 8 + i) <= codebook_value(up, cb * 8 + i + 1));
  // unscaled codebooks carry the weights' magnitude (sigma 0.02)
  CHECK(std::abs(codebook_value(up, 7)) < 0.2f);
  auto model = Model::load(path, ModelOptions{"cpu", 2});
  auto s = model->new_session(16);
  std::vector<float> logits;
  s->eval({int32_t(f.config().bos_id), 'a', 'b'}, &logits, 1);
  CHECK(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));

  o.float_only = true;
  o.float_dtype = DType::kF16;
  KmqFile ff(write_tiny("synth-f16.kmq", o));
  CHECK(ff.get("blk.1.attn_v").dtype == DType::kF16);
  CHECK(ff.get("blk.1.attn_norm").dtype == DType::kF32);
}

TEST_CASE("bench: bytes per token count each weight once, plus one embedding row") {
  ConvertOptions o;
  o.threads = 2;
  const auto path = write_tiny("synth-bench.kmq", o);
  KmqFile f(path);
  uint64_t all = 0;
  for (const auto& t : f.tensors()) all += t.file_size;
  const auto& e = f.get("token_embd");
  CHECK(weight_bytes_per_token(f) == all - e.file_size + e.file_size / uint64_t(e.rows));
  const auto toks = bench_tokens(f.config(), 10);
  REQUIRE(toks.size() == 10);
  CHECK(toks[0] == f.config().bos_id);
  CHECK(toks == bench_tokens(f.config(), 10));
  CHECK(std::all_of(toks.begin(), toks.end(), [&](int32_t t) { return t >= 0 && t < f.config().n_vocab; }));
  const auto st = tokens_per_second(10, {1.0, 0.5});
  CHECK(st.mean == doctest::Approx(15.0));
  CHECK(st.stddev == doctest::Approx(std::sqrt(50.0)));
}

// llama2.c reader: the real stories260K in both formats against each other and against its
// HF repackaging (q/k permutation bit for bit), synthetic untied files, and wrong sizes.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>

#include "convert/source.h"
#include "kmq/error.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using kmq::test::check_error;
using kmq::test::error_of;

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(s.data(), std::streamsize(s.size()));
}

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

const kmq::SourceTensor& tensor(const kmq::SourceModel& m, const std::string& name) {
  for (const auto& t : m.tensors)
    if (t.name == name) return t;
  FAIL("no tensor " << name);
  throw 0;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// A llama2.c tokenizer.bin of n tokens: max_len, then per token score f32, len i32, bytes.
fs::path write_tokenizer(int n) {
  std::string s;
  put<int32_t>(s, 8);
  for (int i = 0; i < n; ++i) {
    std::string text = i == 0 ? "<unk>" : i == 1 ? "\n<s>\n" : i == 2 ? "\n</s>\n" : "t";
    if (i > 2) text += std::to_string(i);
    put<float>(s, float(-i));
    put<int32_t>(s, int32_t(text.size()));
    s += text;
  }
  auto p = kmq::test::temp_path("tok" + std::to_string(n) + ".bin");
  write_file(p, s);
  return p;
}

// A tiny model, written in both formats from the same weights. Each tensor is filled
// with tag*10000 + index so that a value names its tensor and position.
struct Tiny {
  int32_t dim = 8, hidden = 12, layers = 2, heads = 2, kv_heads = 1, vocab = 16, seq = 4;
  bool shared = false;

  int32_t hd() const { return dim / heads; }
  int32_t kv() const { return kv_heads * hd(); }
  static std::vector<float> fill(int tag, size_t n) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = float(tag * 10000 + int(i));
    return v;
  }
  // tags: embd 1, per layer l: att 10+l, q 20+l, k 30+l, v 40+l, o 50+l, ffn 60+l, w1 70+l,
  // w2 80+l, w3 90+l; final 2, freq 3/4, wcls 5.
  void append(std::string& s, int tag, size_t n) const {
    auto v = fill(tag, n);
    s.append(reinterpret_cast<const char*>(v.data()), n * 4);
  }
  void params(std::string& s, int32_t vocab_field) const {
    for (int32_t x : {dim, hidden, layers, heads, kv_heads, vocab_field, seq}) put(s, x);
  }
  std::string legacy() const {
    std::string s;
    params(s, shared ? vocab : -vocab);
    const size_t D = size_t(dim), H = size_t(hidden), KV = size_t(kv());
    append(s, 1, size_t(vocab) * D);
    for (int l = 0; l < layers; ++l) append(s, 10 + l, D);
    for (int l = 0; l < layers; ++l) append(s, 20 + l, D * D);
    for (int l = 0; l < layers; ++l) append(s, 30 + l, KV * D);
    for (int l = 0; l < layers; ++l) append(s, 40 + l, KV * D);
    for (int l = 0; l < layers; ++l) append(s, 50 + l, D * D);
    for (int l = 0; l < layers; ++l) append(s, 60 + l, D);
    for (int l = 0; l < layers; ++l) append(s, 70 + l, H * D);
    for (int l = 0; l < layers; ++l) append(s, 80 + l, D * H);
    for (int l = 0; l < layers; ++l) append(s, 90 + l, H * D);
    append(s, 2, D);
    append(s, 3, size_t(seq * hd() / 2));
    append(s, 4, size_t(seq * hd() / 2));
    if (!shared) append(s, 5, size_t(vocab) * D);
    return s;
  }
  std::string v1() const {
    std::string s;
    put<uint32_t>(s, 0x616b3432);
    put<int32_t>(s, 1);
    params(s, vocab);
    put<uint8_t>(s, shared ? 1 : 0);
    s.resize(256, '\0');
    const size_t D = size_t(dim), H = size_t(hidden), KV = size_t(kv());
    for (int l = 0; l < layers; ++l) append(s, 10 + l, D);
    for (int l = 0; l < layers; ++l) append(s, 60 + l, D);
    append(s, 2, D);
    append(s, 1, size_t(vocab) * D);
    for (int l = 0; l < layers; ++l) append(s, 20 + l, D * D);
    for (int l = 0; l < layers; ++l) append(s, 30 + l, KV * D);
    for (int l = 0; l < layers; ++l) append(s, 40 + l, KV * D);
    for (int l = 0; l < layers; ++l) append(s, 50 + l, D * D);
    for (int l = 0; l < layers; ++l) append(s, 70 + l, H * D);
    for (int l = 0; l < layers; ++l) append(s, 80 + l, D * H);
    for (int l = 0; l < layers; ++l) append(s, 90 + l, H * D);
    if (!shared) append(s, 5, size_t(vocab) * D);
    return s;
  }
};

void check_tiny(const kmq::SourceModel& m, const Tiny& t) {
  const auto& c = m.config;
  CHECK(c.dim == t.dim);
  CHECK(c.ffn_dim == t.hidden);
  CHECK(c.n_layers == t.layers);
  CHECK(c.n_heads == t.heads);
  CHECK(c.n_kv_heads == t.kv_heads);
  CHECK(c.head_dim == t.hd());
  CHECK(c.n_vocab == t.vocab);
  CHECK(c.max_seq == t.seq);
  CHECK(c.tied_embeddings == t.shared);
  CHECK(m.tensors.size() == size_t(2 + 9 * t.layers + (t.shared ? 0 : 1)));
  CHECK(tensor(m, "token_embd").load() == Tiny::fill(1, size_t(t.vocab * t.dim)));
  CHECK(tensor(m, "output_norm").load() == Tiny::fill(2, size_t(t.dim)));
  if (!t.shared) {
    CHECK(m.tensors.back().name == "output");
    CHECK(m.tensors.back().shape == std::vector<int64_t>{t.vocab, t.dim});
    CHECK(m.tensors.back().load() == Tiny::fill(5, size_t(t.vocab * t.dim)));
  }
  const size_t D = size_t(t.dim), H = size_t(t.hidden);
  CHECK(tensor(m, "blk.1.attn_norm").load() == Tiny::fill(11, D));
  CHECK(tensor(m, "blk.1.ffn_norm").load() == Tiny::fill(61, D));
  CHECK(tensor(m, "blk.1.attn_v").load() == Tiny::fill(41, size_t(t.kv()) * D));
  CHECK(tensor(m, "blk.1.attn_output").load() == Tiny::fill(51, D * D));
  CHECK(tensor(m, "blk.1.ffn_gate").load() == Tiny::fill(71, H * D));  // w1
  CHECK(tensor(m, "blk.1.ffn_down").load() == Tiny::fill(81, D * H));  // w2
  CHECK(tensor(m, "blk.1.ffn_up").load() == Tiny::fill(91, H * D));    // w3
  CHECK(tensor(m, "blk.1.ffn_down").shape == std::vector<int64_t>{t.dim, t.hidden});
  // q: within each head of hd = 4 rows, new rows (0,1,2,3) = old rows (0,2,1,3).
  auto q = tensor(m, "blk.1.attn_q").load();
  auto raw = Tiny::fill(21, D * D);
  const int old_of_new[4] = {0, 2, 1, 3};
  for (int h = 0; h < t.heads; ++h)
    for (int r = 0; r < 4; ++r)
      for (size_t col = 0; col < D; ++col)
        CHECK(q[(size_t(h * 4 + r)) * D + col] == raw[size_t(h * 4 + old_of_new[r]) * D + col]);
  auto k = tensor(m, "blk.0.attn_k").load();
  auto kraw = Tiny::fill(30, size_t(t.kv()) * D);
  CHECK(k[1 * D + 5] == kraw[2 * D + 5]);
  CHECK(k[2 * D + 0] == kraw[1 * D + 0]);
  CHECK(k[3 * D + 7] == kraw[3 * D + 7]);
}

}  // namespace

TEST_CASE("llama2c: synthetic legacy and v1 files, untied and shared") {
  auto tok = write_tokenizer(16);
  for (bool shared : {false, true}) {
    CAPTURE(shared);
    Tiny t;
    t.shared = shared;
    auto legacy = kmq::test::temp_path("tiny.bin");
    auto v1 = kmq::test::temp_path("tiny_v1.bin");
    write_file(legacy, t.legacy());
    write_file(v1, t.v1());
    auto a = kmq::open_llama2c(legacy, tok);
    check_tiny(a, t);
    CHECK(a.description.find("legacy") != std::string::npos);
    auto b = kmq::open_llama2c(v1, tok);
    check_tiny(b, t);
    CHECK(b.description.find("version 1") != std::string::npos);
    CHECK(a.tokenizer.tokens.size() == 16);
  }
}

TEST_CASE("llama2c: wrong sizes and corrupt headers") {
  auto tok = write_tokenizer(16);
  Tiny t;
  auto p = kmq::test::temp_path("broken.bin");
  const std::string fname = p.filename().string();
  auto open = [&] { kmq::open_llama2c(p, tok); };
  const std::string legacy = t.legacy(), v1 = t.v1();

  write_file(p, legacy.substr(0, legacy.size() - 4));
  check_error(open, {fname, "size", std::to_string(legacy.size() - 4), std::to_string(legacy.size())});
  write_file(p, legacy + "xxxx");
  check_error(open, {fname, "size", std::to_string(legacy.size())});
  write_file(p, v1.substr(0, v1.size() - 1));
  check_error(open, {fname, "size", "version 1"});
  write_file(p, legacy.substr(0, 10));
  check_error(open, {fname, "header", "truncated"});
  write_file(p, v1.substr(0, 100));
  check_error(open, {fname, "header", "truncated"});
  write_file(p, "");
  check_error(open, {fname, "truncated"});

  std::string s = v1;
  int32_t two = 2;
  std::memcpy(s.data() + 4, &two, 4);  // an int8 version-2 export
  write_file(p, s);
  check_error(open, {fname, "version 2", "not supported"});

  s = legacy;
  int32_t zero = 0;
  std::memcpy(s.data() + 16, &zero, 4);  // n_kv_heads 0
  write_file(p, s);
  check_error(open, {fname, "n_kv_heads"});

  s = legacy;
  int32_t odd = 3;
  std::memcpy(s.data() + 12, &odd, 4);  // n_heads 3 does not divide dim 8
  write_file(p, s);
  check_error(open, {fname, "n_heads"});

  s = legacy;
  int32_t big = 1 << 30;  // huge but in int32: the size check must not overflow
  for (int off : {0, 4, 8, 20, 24}) std::memcpy(s.data() + off, &big, 4);
  write_file(p, s);
  check_error(open, {fname});

  s = legacy;
  int32_t most_negative = INT32_MIN;
  std::memcpy(s.data() + 20, &most_negative, 4);
  write_file(p, s);
  check_error(open, {fname, "n_vocab"});

  check_error([&] { kmq::open_llama2c(kmq::test::temp_path("absent.bin"), tok); }, {"absent.bin", "cannot open"});
}

TEST_CASE("llama2c: stories260K legacy == v1 == HF repackaging, bit for bit") {
  if (!kmq::test::have_shared("models/stories260K/stories260K.bin") ||
      !kmq::test::have_shared("models/stories260K-hf/model.safetensors"))
    return;
  const fs::path d = kmq::test::shared_dir() / "models/stories260K";
  auto legacy = kmq::open_llama2c(d / "stories260K.bin", d / "tok512.bin");
  auto v1 = kmq::open_llama2c(d / "stories260K_v1.bin", d / "tok512.bin");
  auto hf = kmq::open_hf_dir(kmq::test::shared_dir() / "models/stories260K-hf");

  const auto& c = legacy.config;
  CHECK(c.dim == 64);
  CHECK(c.ffn_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.head_dim == 8);
  CHECK(c.n_vocab == 512);
  CHECK(c.max_seq == 512);
  CHECK(c.tied_embeddings);
  CHECK(c.rope_theta == 10000.0f);
  CHECK(c.norm_eps == 1e-5f);
  CHECK(c.bos_id == 1);
  CHECK(c.eos_id == 2);
  CHECK(v1.config.tied_embeddings);
  CHECK(legacy.tokenizer.tokens.size() == 512);

  REQUIRE(legacy.tensors.size() == 47);
  REQUIRE(v1.tensors.size() == 47);
  REQUIRE(hf.tensors.size() == 47);
  for (size_t i = 0; i < legacy.tensors.size(); ++i) {
    const auto& a = legacy.tensors[i];
    CAPTURE(a.name);
    CHECK(a.name == v1.tensors[i].name);
    CHECK(a.name == hf.tensors[i].name);
    CHECK(a.shape == hf.tensors[i].shape);
    auto va = a.load();
    CHECK(same_bits(va, v1.tensors[i].load()));
    CHECK(same_bits(va, hf.tensors[i].load()));
  }

  // Negative control: the stored (interleaved) rows differ from HF order; new row 1 is
  // old row 2 of layer 0's wq, which starts at float 512*64 + 5*64 of the legacy file.
  std::string raw = read_file(d / "stories260K.bin");
  const size_t wq0 = 28 + size_t(512 * 64 + 5 * 64) * 4;
  auto q = legacy.tensors[2].load();
  REQUIRE(legacy.tensors[2].name == "blk.0.attn_q");
  CHECK(std::memcmp(q.data() + 64, raw.data() + wq0 + 2 * 64 * 4, 64 * 4) == 0);
  CHECK(std::memcmp(q.data() + 64, raw.data() + wq0 + 1 * 64 * 4, 64 * 4) != 0);
}

TEST_CASE("llama2c: random header values never crash") {
  auto tok = write_tokenizer(16);
  auto p = kmq::test::temp_path("fuzz.bin");
  const int32_t pool[] = {0, -1, 1, 2, 3, 4, 8, 12, 16, -16, 1 << 20, 1 << 30, INT32_MIN, INT32_MAX};
  std::mt19937_64 rng(99);
  Tiny t;
  const std::string files[2] = {t.legacy(), t.v1()};
  int n_ok = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s = files[iter % 2];
    const size_t params_at = iter % 2 ? 8 : 0;
    for (int k = 0; k < 7; ++k)
      if (rng() % 3 == 0) {
        int32_t v = pool[rng() % std::size(pool)];
        std::memcpy(s.data() + params_at + 4 * size_t(k), &v, 4);
      }
    write_file(p, s);
    try {
      auto m = kmq::open_llama2c(p, tok);
      for (const auto& tensor : m.tensors) tensor.load();
      ++n_ok;
    } catch (const kmq::Error&) {
    }
  }
  CHECK(n_ok > 0);
}

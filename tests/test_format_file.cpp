// .kmq format: write/read round trip, layout computed two ways, and rejection of
// truncated, corrupted and inconsistent files with messages naming the file.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <random>

#include "format/layout.h"
#include "kmq/error.h"
#include "kmq/kmq_file.h"
#include "test_util.h"
#include "util/crc32c.h"
#include "util/half.h"

using namespace kmq;

namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_vocab = 8;
  c.dim = 64;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 32;
  c.ffn_dim = 96;
  c.max_seq = 32;
  c.bos_id = 1;
  c.eos_id = 2;
  c.name = "tiny";
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position = 16;
  return c;
}

TokenizerData tiny_tokenizer() {
  TokenizerData t;
  t.kind = TokenizerKind::kSpm;
  for (const char* s : {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a", "b", "c", "d", "e"}) t.tokens.push_back(s);
  t.scores = {0, 0, 0, -1.5f, -2.25f, -3, -4, -5};
  t.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl, TokenType::kNormal,
             TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal};
  t.unk_id = 0;
  t.bos_id = 1;
  t.eos_id = 2;
  t.add_bos = true;
  t.chat_template = "{{ messages }}";
  return t;
}

QuantizedTensor random_quant(int bits, CodebookScope scope, int64_t rows, int64_t cols, int64_t group, int64_t sb,
                             uint64_t seed) {
  std::mt19937_64 rng(seed);
  QuantizedTensor q;
  q.bits = bits;
  q.scope = scope;
  q.group_size = scope == CodebookScope::kGroup ? group : 0;
  q.scale_block = sb;
  q.rows = rows;
  q.cols = cols;
  q.codebook_dtype = scope == CodebookScope::kTensor ? DType::kF32 : DType::kF16;
  q.scale_dtype = DType::kBF16;
  q.indices.resize(size_t(rows * q.row_bytes()));
  for (auto& b : q.indices) b = uint8_t(rng());
  q.codebooks.resize(size_t(q.n_codebooks() << bits));
  std::normal_distribution<float> nd;
  for (auto& c : q.codebooks) c = q.codebook_dtype == DType::kF16 ? round_f16(nd(rng)) : nd(rng);
  q.scales.resize(size_t(rows * q.n_scale_blocks()));
  for (auto& s : q.scales) s = round_bf16(std::abs(nd(rng)) + 0.1f);
  return q;
}

std::vector<uint8_t> read_all(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

void write_all(const std::filesystem::path& p, const std::vector<uint8_t>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// Writes the reference file; returns the float tensor's values.
std::vector<float> write_reference(const std::filesystem::path& p, std::vector<QuantizedTensor>* qs) {
  KmqWriter w(p, tiny_config(), tiny_tokenizer());
  auto emb = test::random_floats(8 * 64, 1);
  w.add_float("token_embd", DType::kBF16, {8, 64}, emb.data());
  auto norm = test::random_floats(64, 2);
  w.add_float("output_norm", DType::kF32, {64}, norm.data());
  qs->push_back(random_quant(1, CodebookScope::kTensor, 5, 100, 0, 64, 3));
  qs->push_back(random_quant(3, CodebookScope::kGroup, 7, 65, 16, 0, 4));
  qs->push_back(random_quant(4, CodebookScope::kRow, 3, 33, 0, 7, 5));
  w.add_quantized("q1", (*qs)[0]);
  w.add_quantized("q3", (*qs)[1]);
  w.add_quantized("q4", (*qs)[2]);
  w.set_notes_json(R"({"hello": "world"})");
  w.finish();
  return emb;
}

}  // namespace

TEST_CASE("format: struct layout") {
  CHECK(sizeof(format::FileHeader) == 128);
  CHECK(sizeof(format::DirEntry) == 256);
  CHECK(offsetof(format::DirEntry, crc) == 200);
}

TEST_CASE("format: round trip of float and quantized tensors") {
  auto path = test::temp_path("roundtrip.kmq");
  std::vector<QuantizedTensor> qs;
  auto emb = write_reference(path, &qs);
  CHECK_FALSE(std::filesystem::exists(path.string() + ".tmp-" + std::to_string(::getpid())));
  KmqFile f(path);
  CHECK(f.version() == 1);
  CHECK(f.config().name == "tiny");
  CHECK(f.config().rope_scaling.type == "llama3");
  CHECK(f.config().rope_scaling.factor == 8.0f);
  CHECK(f.tokenizer().tokens == tiny_tokenizer().tokens);
  CHECK(f.tokenizer().scores == tiny_tokenizer().scores);
  CHECK(f.tokenizer().chat_template == "{{ messages }}");
  CHECK(f.verify().empty());
  REQUIRE(f.tensors().size() == 5);
  const auto& e = f.get("token_embd");
  CHECK(e.dtype == DType::kBF16);
  const auto* eb = static_cast<const uint16_t*>(e.data);
  for (int i = 0; i < 8 * 64; ++i) REQUIRE(eb[i] == f32_to_bf16(emb[size_t(i)]));
  const auto& n = f.get("output_norm");
  CHECK(n.ndim == 1);
  CHECK(n.rows == 64);
  CHECK(n.cols == 1);
  const char* names[] = {"q1", "q3", "q4"};
  for (int k = 0; k < 3; ++k) {
    const auto& t = f.get(names[k]);
    const auto& q = qs[size_t(k)];
    CHECK(t.bits == q.bits);
    CHECK(t.scope == q.scope);
    CHECK(t.rows == q.rows);
    CHECK(t.cols == q.cols);
    // Payload offsets computed a second way: from the region start and the part sizes.
    CHECK(uintptr_t(t.data) % format::kPartAlign == 0);
    CHECK(std::memcmp(t.data, q.indices.data(), q.indices.size()) == 0);
    for (size_t i = 0; i < q.codebooks.size(); ++i) {
      float v = q.codebook_dtype == DType::kF32 ? static_cast<const float*>(t.codebooks)[i]
                                                : f16_to_f32(static_cast<const uint16_t*>(t.codebooks)[i]);
      REQUIRE(v == q.codebooks[i]);
    }
    if (q.scale_block) {
      for (size_t i = 0; i < q.scales.size(); ++i)
        REQUIRE(bf16_to_f32(static_cast<const uint16_t*>(t.scales)[i]) == q.scales[i]);
    } else {
      CHECK(t.scales == nullptr);
    }
    const double expect_bits = double(q.indices.size() * 8 + q.codebooks.size() * 8 * dtype_size(q.codebook_dtype) +
                                      q.scales.size() * 16);
    CHECK(t.file_size * 8 >= expect_bits);
    CHECK(t.file_size * 8 <= expect_bits + 2 * 64 * 8);  // part padding only
  }
  CHECK(f.find("missing") == nullptr);
  CHECK_THROWS_WITH_AS(f.get("missing"), doctest::Contains("missing"), Error);
}

TEST_CASE("format: bad files are rejected with the file named") {
  auto path = test::temp_path("good.kmq");
  std::vector<QuantizedTensor> qs;
  write_reference(path, &qs);
  const auto good = read_all(path);
  format::FileHeader h;
  std::memcpy(&h, good.data(), sizeof h);
  auto bad_path = test::temp_path("bad.kmq");
  auto expect_error = [&](const std::vector<uint8_t>& bytes, const char* word) {
    write_all(bad_path, bytes);
    bool threw = false;
    try {
      KmqFile f(bad_path);
    } catch (const Error& e) {
      threw = true;
      const std::string msg = e.what();
      CHECK_MESSAGE(msg.find(bad_path.string()) != std::string::npos, msg);
      CHECK_MESSAGE(msg.find(word) != std::string::npos, msg);
    }
    CHECK_MESSAGE(threw, "no error for a file that should fail with '", word, "'");
  };
  SUBCASE("missing file") {
    CHECK_THROWS_WITH_AS(KmqFile(test::temp_path("nope.kmq")), doctest::Contains("no such file"), Error);
  }
  SUBCASE("empty and tiny files") {
    expect_error({}, "too small");
    expect_error(std::vector<uint8_t>(good.begin(), good.begin() + 100), "too small");
  }
  SUBCASE("wrong magic") {
    auto b = good;
    b[0] = 'X';
    expect_error(b, "magic");
  }
  SUBCASE("wrong version") {
    auto b = good;
    format::FileHeader hh = h;
    hh.version = 7;
    hh.header_crc = 0;
    hh.header_crc = kmq::crc32c(&hh, sizeof hh);
    std::memcpy(b.data(), &hh, sizeof hh);
    expect_error(b, "version 7");
  }
  SUBCASE("truncated at every section boundary and in between") {
    for (uint64_t cut : {uint64_t(256), uint64_t(300), h.data_offset + 1000, h.meta_offset, h.meta_offset + 10,
                         h.dir_offset, h.dir_offset + 100, h.file_size - 1})
      expect_error(std::vector<uint8_t>(good.begin(), good.begin() + int64_t(cut)), "truncated");
  }
  SUBCASE("bit flips in header, metadata and directory") {
    std::mt19937 rng(42);
    for (int i = 0; i < 40; ++i) {
      auto b = good;
      uint64_t pos;
      const char* word;
      switch (i % 3) {
        case 0: pos = rng() % 128; word = ""; break;
        case 1: pos = h.meta_offset + rng() % h.meta_size; word = "metadata"; break;
        default: pos = h.dir_offset + rng() % (h.dir_count * 256); word = "directory"; break;
      }
      b[pos] ^= uint8_t(1u << (rng() % 8));
      expect_error(b, word);
    }
  }
  SUBCASE("directory entry pointing past the end, or overlapping, with a valid checksum") {
    auto corrupt_dir = [&](int entry, auto&& mutate, const char* word) {
      auto b = good;
      format::DirEntry e;
      std::memcpy(&e, &b[h.dir_offset + entry * 256], sizeof e);
      mutate(e);
      std::memcpy(&b[h.dir_offset + entry * 256], &e, sizeof e);
      format::FileHeader hh = h;
      hh.dir_crc = kmq::crc32c(&b[h.dir_offset], h.dir_count * 256);
      hh.header_crc = 0;
      hh.header_crc = kmq::crc32c(&hh, sizeof hh);
      std::memcpy(b.data(), &hh, sizeof hh);
      expect_error(b, word);
    };
    corrupt_dir(0, [](format::DirEntry& e) { e.offset = 1ull << 40; }, "past the end");
    corrupt_dir(0, [](format::DirEntry& e) { e.size = ~0ull - 10; }, "past the end");
    corrupt_dir(2, [](format::DirEntry& e) { e.part_offset[1] = e.offset + e.size; }, "outside");
    corrupt_dir(2, [](format::DirEntry& e) { e.part_size[0] += 1; }, "needs");
    corrupt_dir(1, [&](format::DirEntry& e) {
      format::DirEntry first;
      std::memcpy(&first, &good[h.dir_offset], sizeof first);
      e.offset = first.offset;
      e.part_offset[0] = first.offset;
    }, "overlap");
    corrupt_dir(2, [](format::DirEntry& e) { e.bits = 9; }, "bits");
    corrupt_dir(2, [](format::DirEntry& e) { e.shape[0] = -1; }, "shape");
    corrupt_dir(0, [](format::DirEntry& e) { e.dtype = 77; }, "dtype");
    corrupt_dir(0, [](format::DirEntry& e) { std::memset(e.name, 'a', sizeof e.name); }, "name");
  }
  SUBCASE("payload corruption is found by verify") {
    auto b = good;
    b[h.data_offset + 10] ^= 0x10;
    write_all(bad_path, b);
    KmqFile f(bad_path);
    auto bad = f.verify();
    REQUIRE(bad.size() == 1);
    CHECK(bad[0] == "token_embd");
  }
}

TEST_CASE("format: the writer never leaves a partial file") {
  auto path = test::temp_path("partial.kmq");
  std::filesystem::remove(path);
  std::filesystem::path tmp;
  {
    KmqWriter w(path, tiny_config(), tiny_tokenizer());
    auto v = test::random_floats(64, 9);
    w.add_float("output_norm", DType::kF32, {64}, v.data());
    tmp = w.temp_path();
    CHECK(std::filesystem::exists(tmp));
    // destroyed without finish(): as if an error was thrown mid-conversion
  }
  CHECK_FALSE(std::filesystem::exists(tmp));
  CHECK_FALSE(std::filesystem::exists(path));
  KmqWriter w(path, tiny_config(), tiny_tokenizer());
  CHECK_THROWS_WITH_AS(w.add_float(std::string(120, 'x'),
                                   DType::kF32, {1}, nullptr),
                       doctest::Contains("must be"), Error);
}

TEST_CASE("format: invalid configs are refused") {
  auto c = tiny_config();
  c.arch = "gpt-neox";
  CHECK_THROWS_WITH_AS(KmqWriter(test::temp_path("x.kmq"), c, tiny_tokenizer()),
                       doctest::Contains("unsupported architecture 'gpt-neox'"), Error);
  c = tiny_config();
  c.n_heads = 3;
  c.n_kv_heads = 2;
  CHECK_THROWS_WITH_AS(KmqWriter(test::temp_path("x.kmq"), c, tiny_tokenizer()), doctest::Contains("n_kv_heads"), Error);
}

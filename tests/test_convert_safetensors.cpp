// safetensors reader: round trips of small files written here, every kind of corrupt
// header rejected with a kmq::Error naming the file, sharded sets, and the real checkpoints.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convert/safetensors.h"
#include "kmq/error.h"
#include "test_util.h"
#include "util/half.h"

namespace fs = std::filesystem;
using kmq::DType;
using kmq::SafetensorsFile;
using kmq::SafetensorsSet;

namespace {

using kmq::test::check_error;
using kmq::test::error_of;

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

// A raw safetensors file: header length (or `len_override`), header text, data bytes.
std::string raw_file(const std::string& header, const std::string& data, int64_t len_override = -1) {
  return u64_le(len_override >= 0 ? uint64_t(len_override) : header.size()) + header + data;
}

struct TensorSpec {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16" or anything for error tests
  std::vector<int64_t> shape;
  std::string bytes;
};

// A well-formed file with tensors laid out in order; `pad` spaces after the JSON.
std::string make_file(const std::vector<TensorSpec>& ts, size_t pad = 0) {
  nlohmann::ordered_json h;
  h["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const auto& t : ts) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  return raw_file(h.dump() + std::string(pad, ' '), data);
}

std::string f32_bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

std::string u16_bytes(const std::vector<uint16_t>& v) {
  std::string s(v.size() * 2, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// One tensor entry as JSON text, for hand-made headers.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t b,
                  uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(b) + "," + std::to_string(e) + "]}";
}

}  // namespace

TEST_CASE("safetensors: f32, f16 and bf16 tensors load as f32") {
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
  const std::vector<float> halves = {0.5f, -1.0f, 65504.0f, 6.1035156e-05f};
  std::vector<uint16_t> f16, bf16;
  for (float x : halves) f16.push_back(kmq::f32_to_f16(x));
  for (float x : halves) bf16.push_back(kmq::f32_to_bf16(x));
  // pad 3 leaves the data section at an odd offset: loads must not assume alignment
  auto path = kmq::test::temp_path("ok.safetensors");
  write_bytes(path, make_file({{"w.f32", "F32", {2, 3}, f32_bytes(f32)},
                               {"b.f16", "F16", {4}, u16_bytes(f16)},
                               {"a.bf16", "BF16", {2, 2}, u16_bytes(bf16)},
                               {"empty", "F32", {0, 5}, ""},
                               {"scalar", "F32", {}, f32_bytes({7.0f})}},
                              3));
  SafetensorsFile f(path);
  REQUIRE(f.tensors().size() == 5);
  CHECK(f.tensors()[0].name == "a.bf16");  // sorted by name; __metadata__ skipped
  CHECK(f.find("__metadata__") == nullptr);
  const auto* w = f.find("w.f32");
  REQUIRE(w);
  CHECK(w->dtype == DType::kF32);
  CHECK(w->shape == std::vector<int64_t>{2, 3});
  CHECK(f.load_f32(*w) == f32);
  CHECK(f.load_f32(*f.find("b.f16")) == halves);
  CHECK(f.load_f32(*f.find("a.bf16")) == std::vector<float>{0.5f, -1.0f, kmq::round_bf16(65504.0f),
                                                           kmq::round_bf16(6.1035156e-05f)});
  CHECK(f.load_f32(*f.find("empty")).empty());
  CHECK(f.load_f32(*f.find("scalar")) == std::vector<float>{7.0f});
  CHECK(f.find("nope") == nullptr);
}

TEST_CASE("safetensors: corrupt files are rejected with the file name and the problem") {
  auto path = kmq::test::temp_path("bad.safetensors");
  const std::string fname = path.filename().string();
  auto open = [&] { SafetensorsFile f(path); };
  const std::string good = make_file({{"t", "F32", {2, 2}, f32_bytes({1, 2, 3, 4})}});

  SUBCASE("missing file") {
    fs::remove(path);
    check_error(open, {fname, "cannot open"});
  }
  SUBCASE("shorter than the length field") {
    write_bytes(path, "abc");
    check_error(open, {fname, "truncated"});
  }
  SUBCASE("truncated in the header") {
    write_bytes(path, good.substr(0, 20));
    check_error(open, {fname, "past the end of the file"});
  }
  SUBCASE("truncated in the data") {
    write_bytes(path, good.substr(0, good.size() - 1));
    check_error(open, {fname, "'t'", "past the end"});
  }
  SUBCASE("header length past EOF") {
    write_bytes(path, raw_file("{}", "", 1000));
    check_error(open, {fname, "header length 1000", "past the end"});
  }
  SUBCASE("absurd header length") {
    write_bytes(path, raw_file("{}", "", int64_t(1) << 62));
    check_error(open, {fname, "exceeds"});
  }
  SUBCASE("header not JSON") {
    write_bytes(path, raw_file("{\"t\": [1, 2", ""));
    check_error(open, {fname, "not valid JSON"});
  }
  SUBCASE("header not an object") {
    write_bytes(path, raw_file("[1,2,3]", ""));
    check_error(open, {fname, "not a JSON object"});
  }
  SUBCASE("data_offsets past the end of the data") {
    write_bytes(path, raw_file("{" + entry("t", "F32", "[2,2]", 8, 24) + "}", std::string(16, '\0')));
    check_error(open, {fname, "'t'", "past the end"});
  }
  SUBCASE("begin after end") {
    write_bytes(path, raw_file("{" + entry("t", "F32", "[0]", 8, 4) + "}", std::string(16, '\0')));
    check_error(open, {fname, "'t'", "begin is past end"});
  }
  SUBCASE("byte range disagrees with shape and dtype") {
    write_bytes(path, raw_file("{" + entry("t", "F32", "[2,3]", 0, 20) + "}", std::string(24, '\0')));
    check_error(open, {fname, "'t'", "size mismatch"});
  }
  SUBCASE("overlapping tensors") {
    write_bytes(path, raw_file("{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[4]", 8, 24) + "}",
                               std::string(24, '\0')));
    check_error(open, {fname, "'a'", "'b'", "overlap"});
  }
  SUBCASE("unsupported dtype") {
    write_bytes(path, raw_file("{" + entry("ids", "I64", "[2]", 0, 16) + "}", std::string(16, '\0')));
    check_error(open, {fname, "'ids'", "unsupported dtype 'I64'"});
  }
  SUBCASE("unknown dtype") {
    write_bytes(path, raw_file("{" + entry("q", "Q4_K", "[2]", 0, 16) + "}", std::string(16, '\0')));
    check_error(open, {fname, "'q'", "unknown dtype 'Q4_K'"});
  }
  SUBCASE("negative dimension") {
    write_bytes(path, raw_file("{" + entry("t", "F32", "[-1,4]", 0, 16) + "}", std::string(16, '\0')));
    check_error(open, {fname, "'t'", "negative"});
  }
  SUBCASE("element count overflows") {
    const std::string big = "[1099511627776,1099511627776,1099511627776]";
    write_bytes(path, raw_file("{" + entry("t", "F32", big, 0, 16) + "}", std::string(16, '\0')));
    check_error(open, {fname, "'t'", "overflow"});
  }
  SUBCASE("byte count overflows") {
    const std::string big = "[4611686018427387904,8]";  // 2^62 * 8 elements
    write_bytes(path, raw_file("{" + entry("t", "F32", big, 0, 16) + "}", std::string(16, '\0')));
    check_error(open, {fname, "'t'"});
  }
  SUBCASE("offsets beyond 64 bits") {
    write_bytes(path, raw_file("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e30]}}", ""));
    check_error(open, {fname, "'t'", "data_offsets"});
  }
  SUBCASE("missing fields") {
    write_bytes(path, raw_file("{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", std::string(4, '\0')));
    check_error(open, {fname, "'t'", "data_offsets"});
    write_bytes(path, raw_file("{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", std::string(4, '\0')));
    check_error(open, {fname, "'t'", "dtype"});
    write_bytes(path, raw_file("{\"t\":7}", ""));
    check_error(open, {fname, "'t'", "not a JSON object"});
  }
}

TEST_CASE("safetensors: sharded sets through model.safetensors.index.json") {
  auto dir = kmq::test::temp_path("sharded");
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_bytes(dir / "part-1.safetensors", make_file({{"a", "F32", {2}, f32_bytes({1, 2})}}));
  write_bytes(dir / "part-2.safetensors",
              make_file({{"b", "BF16", {1}, u16_bytes({kmq::f32_to_bf16(3.0f)})}, {"c", "F32", {1}, f32_bytes({4})}}));
  auto write_index = [&](const nlohmann::json& wm) {
    write_bytes(dir / "model.safetensors.index.json", nlohmann::json{{"metadata", {}}, {"weight_map", wm}}.dump());
  };
  const std::string index_name = "model.safetensors.index.json";

  SUBCASE("all tensors found across shards") {
    write_index({{"a", "part-1.safetensors"}, {"b", "part-2.safetensors"}, {"c", "part-2.safetensors"}});
    SafetensorsSet s(dir);
    CHECK(s.sharded());
    CHECK(s.n_files() == 2);
    CHECK(s.entries().size() == 3);
    const auto* b = s.find("b");
    REQUIRE(b);
    CHECK(b->file->load_f32(*b->info) == std::vector<float>{3.0f});
    CHECK(s.find("c")->file->load_f32(*s.find("c")->info) == std::vector<float>{4.0f});
    CHECK(s.find("zzz") == nullptr);
  }
  SUBCASE("missing shard") {
    write_index({{"a", "part-1.safetensors"}, {"b", "part-3-of-3.safetensors"}});
    check_error([&] { SafetensorsSet s(dir); }, {index_name, "part-3-of-3.safetensors", "not found"});
  }
  SUBCASE("tensor not in its shard") {
    write_index({{"a", "part-2.safetensors"}, {"b", "part-2.safetensors"}});
    check_error([&] { SafetensorsSet s(dir); }, {index_name, "'a'", "part-2.safetensors"});
  }
  SUBCASE("tensor in two shards") {
    write_bytes(dir / "part-3.safetensors", make_file({{"a", "F32", {1}, f32_bytes({9})}}));
    write_index({{"a", "part-1.safetensors"}, {"z", "part-3.safetensors"}});
    check_error([&] { SafetensorsSet s(dir); }, {"'a'", "part-1.safetensors", "part-3.safetensors", "both"});
  }
  SUBCASE("shard name escaping the folder") {
    write_index({{"a", "../part-1.safetensors"}});
    check_error([&] { SafetensorsSet s(dir); }, {index_name, "not a plain file name"});
  }
  SUBCASE("index without weight_map") {
    write_bytes(dir / index_name, "{\"metadata\": {}}");
    check_error([&] { SafetensorsSet s(dir); }, {index_name, "weight_map"});
  }
  SUBCASE("index not JSON") {
    write_bytes(dir / index_name, "{\"weight_map\": ");
    check_error([&] { SafetensorsSet s(dir); }, {index_name, "not valid JSON"});
  }
  SUBCASE("corrupt shard") {
    write_bytes(dir / "part-2.safetensors", "xy");
    write_index({{"a", "part-1.safetensors"}, {"b", "part-2.safetensors"}});
    check_error([&] { SafetensorsSet s(dir); }, {"part-2.safetensors", "truncated"});
  }
  SUBCASE("no weights at all") {
    auto empty = dir / "empty";
    fs::create_directories(empty);
    check_error([&] { SafetensorsSet s(empty); }, {"empty", "no model.safetensors"});
  }
}

// Reads bytes [off, off + n) of a file with plain iostreams, independently of the reader.
static std::string read_at(const fs::path& p, uint64_t off, size_t n) {
  std::ifstream f(p, std::ios::binary);
  f.seekg(std::streamoff(off));
  std::string s(n, '\0');
  f.read(s.data(), std::streamsize(n));
  REQUIRE(f.good());
  return s;
}

TEST_CASE("safetensors: stories260K-hf model.safetensors (real, f32)") {
  if (!kmq::test::have_shared("models/stories260K-hf/model.safetensors")) return;
  auto dir = kmq::test::shared_dir() / "models/stories260K-hf";
  SafetensorsSet s(dir);
  CHECK(!s.sharded());
  CHECK(s.entries().size() == 47);
  for (const auto& [name, e] : s.entries()) CHECK(e.info->dtype == DType::kF32);
  const auto* emb = s.find("model.embed_tokens.weight");
  REQUIRE(emb);
  CHECK(emb->info->shape == std::vector<int64_t>{512, 64});
  // The README: header length 4856, data from byte 4864, embed_tokens first.
  CHECK(read_at(dir / "model.safetensors", 0, 8) == u64_le(4856));
  auto v = emb->file->load_f32(*emb->info);
  std::string raw = read_at(dir / "model.safetensors", 4864, 512 * 64 * 4);
  CHECK(std::memcmp(v.data(), raw.data(), raw.size()) == 0);
  const auto* k = s.find("model.layers.4.self_attn.k_proj.weight");
  REQUIRE(k);
  CHECK(k->info->shape == std::vector<int64_t>{32, 64});
  auto kv = k->file->load_f32(*k->info);
  std::string kraw = read_at(dir / "model.safetensors", 4864 + k->info->begin, 32 * 64 * 4);
  CHECK(std::memcmp(kv.data(), kraw.data(), kraw.size()) == 0);
}

TEST_CASE("safetensors: kmq-novels-51m (real, 3 bf16 shards)") {
  if (!kmq::test::have_shared("models/kmq-novels-51m/model.safetensors.index.json")) return;
  auto dir = kmq::test::shared_dir() / "models/kmq-novels-51m";
  SafetensorsSet s(dir);
  CHECK(s.sharded());
  CHECK(s.n_files() == 3);
  CHECK(s.entries().size() == 1 + 8 * 9 + 1);
  uint64_t n_params = 0;
  for (const auto& [name, e] : s.entries()) {
    CHECK(e.info->dtype == DType::kBF16);
    n_params += e.info->n_elements();
  }
  CHECK(n_params == 50906112);  // "total_parameters" of the index
  // Shard 3 holds layer 7's down_proj; decode a few of its bf16 values by hand.
  const auto* d = s.find("model.layers.7.mlp.down_proj.weight");
  REQUIRE(d);
  CHECK(fs::path(d->file->path()).filename() == "model-00003-of-00003.safetensors");
  CHECK(d->info->shape == std::vector<int64_t>{512, 1536});
  const fs::path shard = dir / "model-00003-of-00003.safetensors";
  uint64_t hlen = 0;
  std::memcpy(&hlen, read_at(shard, 0, 8).data(), 8);
  auto header = nlohmann::json::parse(read_at(shard, 8, hlen));
  const uint64_t begin = header["model.layers.7.mlp.down_proj.weight"]["data_offsets"][0];
  std::string raw = read_at(shard, 8 + hlen + begin, 1536 * 2 * 2);  // rows 0 and 1
  auto v = d->file->load_f32(*d->info);
  REQUIRE(v.size() == 512u * 1536u);
  for (size_t i : {size_t(0), size_t(1), size_t(777), size_t(1536), size_t(3071)}) {
    uint16_t h;
    std::memcpy(&h, raw.data() + 2 * i, 2);
    uint32_t bits = uint32_t(h) << 16;
    float x;
    std::memcpy(&x, &bits, 4);
    CHECK(v[i] == x);
  }
  double sumsq = 0;
  for (float x : v) sumsq += double(x) * x;
  CHECK(sumsq > 0);  // a trained matrix, not zeros
}

TEST_CASE("safetensors: randomly damaged files never crash") {
  // Every outcome is either a clean kmq::Error or a file whose tensors all load.
  const std::string good = make_file({{"a", "F32", {2, 3}, f32_bytes({1, 2, 3, 4, 5, 6})},
                                      {"b", "BF16", {4}, u16_bytes({1, 2, 3, 4})},
                                      {"c", "F16", {1, 2}, u16_bytes({5, 6})}});
  auto path = kmq::test::temp_path("fuzz.safetensors");
  std::mt19937_64 rng(1234);
  int n_errors = 0, n_ok = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = good;
    const int n_edits = 1 + int(rng() % 4);
    for (int e = 0; e < n_edits; ++e) {
      const size_t at = rng() % s.size();
      switch (rng() % 4) {
        case 0: s[at] = char(rng()); break;                         // random byte
        case 1: s[at] = "0123456789[],-\"{}e."[rng() % 19]; break;  // JSON-ish byte
        case 2: s.resize(at); break;                                // truncation
        default: s.insert(s.begin() + at, char('0' + rng() % 10)); break;  // grow a number
      }
      if (s.empty()) s.push_back('x');  // not s = "x": GCC 12 warns (-Wrestrict, falsely)
    }
    write_bytes(path, s);
    try {
      SafetensorsFile f(path);
      for (const auto& t : f.tensors()) {
        auto v = f.load_f32(t);
        CHECK(v.size() == t.n_elements());
      }
      ++n_ok;
    } catch (const kmq::Error&) {
      ++n_errors;
    }
  }
  CHECK(n_errors > 1000);
  CHECK(n_ok > 0);
}

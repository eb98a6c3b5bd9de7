// TokenizerData <-> JSON (the .kmq tokenizer record): exact round trips for every loader,
// and rejection of malformed or hostile input with kmq::Error.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "kmq/error.h"
#include "kmq/tokenizer.h"
#include "test_util.h"
#include "text/tokenizer_json.h"

using namespace kmq;
using Json = nlohmann::json;

namespace {

// Exact equality, NaN scores compared bitwise.
void check_same(const TokenizerData& a, const TokenizerData& b) {
  CHECK(a.kind == b.kind);
  CHECK(a.tokens == b.tokens);
  REQUIRE(a.scores.size() == b.scores.size());
  for (size_t i = 0; i < a.scores.size(); ++i) {
    uint32_t x, y;
    std::memcpy(&x, &a.scores[i], 4);
    std::memcpy(&y, &b.scores[i], 4);
    if (x != y) FAIL_CHECK("score " << i << " differs: " << a.scores[i] << " vs " << b.scores[i]);
  }
  CHECK(a.types == b.types);
  CHECK(a.merges == b.merges);
  CHECK(a.pre_tokenizer == b.pre_tokenizer);
  CHECK(a.bos_id == b.bos_id);
  CHECK(a.eos_id == b.eos_id);
  CHECK(a.unk_id == b.unk_id);
  CHECK(a.pad_id == b.pad_id);
  CHECK(a.eog_ids == b.eog_ids);
  CHECK(a.add_bos == b.add_bos);
  CHECK(a.add_eos == b.add_eos);
  CHECK(a.add_dummy_prefix == b.add_dummy_prefix);
  CHECK(a.remove_extra_whitespaces == b.remove_extra_whitespaces);
  CHECK(a.byte_fallback == b.byte_fallback);
  CHECK(a.chat_template == b.chat_template);
}

// Through text, as the file stores it.
TokenizerData round_trip(const TokenizerData& d) {
  const std::string text = tokenizer_to_json(d).dump();
  return tokenizer_from_json(Json::parse(text), "test.kmq");
}

// A small hand-made byte-level tokenizer: all 256 bytes, a few merges, odd bytes and specials.
TokenizerData tiny_bpe() {
  TokenizerData d;
  d.kind = TokenizerKind::kBpe;
  d.pre_tokenizer = "gpt2";
  for (int b = 0; b < 256; ++b) d.tokens.push_back(std::string(1, char(b)));
  d.tokens.push_back("ab");
  d.tokens.push_back("\xff\xfe");
  d.tokens.push_back(std::string("\0x", 2));
  d.tokens.push_back("<|end|>");
  d.types.assign(d.tokens.size(), TokenType::kNormal);
  d.types.back() = TokenType::kControl;
  d.merges = {{"a", "b"}, {"\xff", "\xfe"}, {std::string(1, '\0'), "x"}};
  d.eos_id = 259;
  d.bos_id = 259;
  d.eog_ids = {259};
  d.add_dummy_prefix = false;
  d.chat_template = "{{ messages }} \xe2\x80\x94";
  return d;
}

}  // namespace

TEST_CASE("JSON round trip: hand-made tokenizer with non-UTF-8 bytes and odd floats") {
  TokenizerData d = tiny_bpe();
  d.scores.assign(d.tokens.size(), 0.0f);
  d.scores[0] = 0.1f;
  d.scores[1] = -1e-45f;  // denormal
  d.scores[2] = std::numeric_limits<float>::max();
  d.scores[3] = -std::numeric_limits<float>::infinity();
  d.scores[4] = std::numeric_limits<float>::quiet_NaN();
  d.scores[5] = -0.0f;
  const Json j = tokenizer_to_json(d);
  CHECK(j["tokens"][0xff].is_object());  // lone 0xFF is not UTF-8: base64
  CHECK(j["tokens"][int('a')] == "a");
  check_same(d, round_trip(d));
  const Tokenizer tok(round_trip(d));
  CHECK(tok.encode("xab\xff\xfe", false) == std::vector<int32_t>{'x', 256, 257});
  CHECK(tok.decode({'x', 256, 257, 259}) == "xab\xff\xfe");
}

TEST_CASE("JSON round trip: every real tokenizer") {
  const auto s = test::shared_dir();
  std::vector<std::pair<std::string, std::function<TokenizerData()>>> cases = {
      {"tokenizers/llama2-spm/tokenizer.model",
       [&] { return load_tokenizer_spm_model(s / "tokenizers/llama2-spm/tokenizer.model"); }},
      {"models/stories260K/tok512.bin",
       [&] { return load_tokenizer_llama2c(s / "models/stories260K/tok512.bin", 512); }},
      {"models/stories260K-hf/tokenizer.model",
       [&] { return load_tokenizer_hf_dir(s / "models/stories260K-hf"); }},
      {"models/kmq-novels-51m/tokenizer.json",
       [&] { return load_tokenizer_hf_dir(s / "models/kmq-novels-51m"); }},
      {"tokenizers/llama3-tiktoken/tokenizer.model",
       [&] { return load_tokenizer_tiktoken(s / "tokenizers/llama3-tiktoken/tokenizer.model"); }},
  };
  for (const auto& [rel, load] : cases) {
    if (!test::have_shared(rel)) continue;
    INFO(rel);
    const TokenizerData d = load();
    const TokenizerData r = round_trip(d);
    check_same(d, r);
    const Tokenizer a(d), b(r);
    const std::string text = "Hello world! \xce\xb1\xce\xb2 12345 \xf0\x9f\x99\x82\n\n  x";
    CHECK(a.encode(text) == b.encode(text));
  }
}

TEST_CASE("JSON reader rejects malformed input with kmq::Error") {
  const Json good = tokenizer_to_json(tiny_bpe());
  CHECK_NOTHROW(tokenizer_from_json(good, "f"));
  const auto bad = [&](const std::function<void(Json&)>& edit) {
    Json j = good;
    edit(j);
    CHECK_THROWS_AS(tokenizer_from_json(j, "f.kmq"), Error);
    try {
      tokenizer_from_json(j, "f.kmq");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).rfind("f.kmq", 0) == 0);
    }
  };
  bad([](Json& j) { j = Json::array(); });
  bad([](Json& j) { j.erase("tokens"); });
  bad([](Json& j) { j["format_version"] = 2; });
  bad([](Json& j) { j["kind"] = "wordpiece"; });
  bad([](Json& j) { j["tokens"] = Json::array(); });
  bad([](Json& j) { j["tokens"][3] = 5; });
  bad([](Json& j) { j["tokens"][3] = Json{{"b64", "!!!"}}; });
  bad([](Json& j) { j["tokens"][3] = Json{{"hex", "00"}}; });
  bad([](Json& j) { j["types"][0] = 9; });
  bad([](Json& j) { j["types"][0] = "1"; });
  bad([](Json& j) { j["types"].erase(0); });
  bad([](Json& j) { j["scores"] = Json::array({1.0}); });
  bad([](Json& j) { j["scores"] = Json(std::vector<double>(260, 1e300)); });
  bad([](Json& j) { j["bos_id"] = 260; });
  bad([](Json& j) { j["eos_id"] = -2; });
  bad([](Json& j) { j["unk_id"] = 1e20; });
  bad([](Json& j) { j["pad_id"] = 4294967296ull; });
  bad([](Json& j) { j["eog_ids"] = Json::array({-1}); });
  bad([](Json& j) { j["eog_ids"] = Json::array({100000}); });
  bad([](Json& j) { j["add_bos"] = 1; });
  bad([](Json& j) { j["merges"][0] = Json::array({"a"}); });
  bad([](Json& j) { j["merges"][0] = Json::array({"q", "z"}); });  // "qz" is not a token
  bad([](Json& j) { j["pre_tokenizer"] = "(?:.*)*"; });
  bad([](Json& j) { j["chat_template"] = nullptr; });
  bad([](Json& j) {  // byte tokens must be named <0xXX>
    j["kind"] = "spm";
    j["merges"] = Json::array();
    j["pre_tokenizer"] = "";
    j["types"][0] = 6;
  });
}

TEST_CASE("JSON reader survives random corruption") {
  const Json good = tokenizer_to_json(tiny_bpe());
  std::mt19937 rng(7);
  const std::vector<Json> junk = {nullptr, -1, 1 << 30, "x", Json::array(), Json::object(), 0.5, true};
  const std::vector<std::string> keys = {"tokens", "scores", "types", "merges", "bos_id", "eog_ids", "kind"};
  int threw = 0;
  for (int it = 0; it < 300; ++it) {
    Json j = good;
    const std::string& key = keys[rng() % keys.size()];
    Json& v = j[key];
    if (v.is_array() && !v.empty() && rng() % 2)
      v[rng() % v.size()] = junk[rng() % junk.size()];
    else
      v = junk[rng() % junk.size()];
    try {
      const Tokenizer tok(tokenizer_from_json(j, "fuzz"));
      (void)tok.encode("ab x\xff", true, true);
    } catch (const Error&) {
      ++threw;
    }
  }
  CHECK(threw > 0);
}

TEST_CASE("Tokenizer constructor validates hand-built data") {
  TokenizerData d = tiny_bpe();
  d.types.pop_back();
  CHECK_THROWS_AS(Tokenizer{d}, Error);
  d = tiny_bpe();
  d.pre_tokenizer = "nope";
  CHECK_THROWS_AS(Tokenizer{d}, Error);
  d = tiny_bpe();
  d.add_bos = true;
  d.bos_id = -1;
  CHECK_THROWS_AS(Tokenizer{d}, Error);
  CHECK_THROWS_AS(Tokenizer{TokenizerData{}}, Error);
}

// Tokenizer robustness: helpers (UTF-8, base64, GPT-2 byte map, protobuf reader), decode
// conventions, round trips on random text and random bytes, and loaders fed corrupt files.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <fstream>
#include <functional>
#include <random>

#include "kmq/error.h"
#include "kmq/tokenizer.h"
#include "test_util.h"
#include "text/protobuf_reader.h"
#include "text/text_util.h"
#include "util/mmap_file.h"

using namespace kmq;

namespace {

void write_file(const std::filesystem::path& p, std::string_view bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Random valid UTF-8 drawn from ASCII, Latin, CJK, emoji and whitespace, without U+2581
// (SentencePiece's space marker, which decodes to ' ').
std::string random_utf8(std::mt19937& rng, size_t n_chars) {
  static const uint32_t kRanges[][2] = {{0x20, 0x7E},       {0x09, 0x0D},     {0xA0, 0x24F},
                                        {0x370, 0x3FF},     {0x4E00, 0x4FFF}, {0x3040, 0x30FF},
                                        {0x1F300, 0x1F64F}, {0x20, 0x20}};
  std::string s;
  for (size_t i = 0; i < n_chars; ++i) {
    const auto& r = kRanges[rng() % std::size(kRanges)];
    text::append_utf8(s, r[0] + rng() % (r[1] - r[0] + 1));
  }
  return s;
}

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += char(rng() % 4 == 0 ? 0x80 + rng() % 128 : rng() % 256);
  return s;
}

std::vector<std::pair<std::string, Tokenizer>> real_tokenizers() {
  std::vector<std::pair<std::string, Tokenizer>> v;
  const auto s = test::shared_dir();
  if (test::have_shared("tokenizers/llama2-spm/tokenizer.model"))
    v.emplace_back("llama2",
                   Tokenizer(load_tokenizer_spm_model(s / "tokenizers/llama2-spm/tokenizer.model")));
  if (test::have_shared("tokenizers/gpt2-bpe/gpt2_vocab.json"))
    v.emplace_back("gpt2", Tokenizer(load_tokenizer_gpt2_files(s / "tokenizers/gpt2-bpe/gpt2_vocab.json",
                                                               s / "tokenizers/gpt2-bpe/gpt2_merges.txt")));
  if (test::have_shared("tokenizers/llama3-tiktoken/tokenizer.model"))
    v.emplace_back("llama3",
                   Tokenizer(load_tokenizer_tiktoken(s / "tokenizers/llama3-tiktoken/tokenizer.model")));
  return v;
}

}  // namespace

TEST_CASE("UTF-8 validation") {
  using text::is_valid_utf8;
  CHECK(is_valid_utf8(""));
  CHECK(is_valid_utf8("abc \xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82"));
  CHECK_FALSE(is_valid_utf8("\x80"));
  CHECK_FALSE(is_valid_utf8("\xc3"));              // truncated
  CHECK_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong
  CHECK_FALSE(is_valid_utf8("\xe0\x80\xaf"));      // overlong
  CHECK_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  CHECK_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
  CHECK_FALSE(is_valid_utf8("\xff"));
}

TEST_CASE("base64") {
  std::mt19937 rng(1);
  for (size_t n = 0; n < 40; ++n) {
    const std::string b = random_bytes(rng, n);
    std::string back;
    REQUIRE(text::base64_decode(text::base64_encode(b), back));
    CHECK(back == b);
  }
  CHECK(text::base64_encode("Man") == "TWFu");
  CHECK(text::base64_encode("Ma") == "TWE=");
  std::string out;
  CHECK_FALSE(text::base64_decode("TWF", out));
  CHECK_FALSE(text::base64_decode("T=Fu", out));
  CHECK_FALSE(text::base64_decode("TW*u", out));
}

TEST_CASE("GPT-2 byte<->unicode mapping is a bijection") {
  const auto& m = text::gpt2_byte_to_unicode();
  CHECK(m[' '] == "\xc4\xa0");   // U+0120 'Ġ'
  CHECK(m['\n'] == "\xc4\x8a");  // U+010A 'Ċ'
  CHECK(m['A'] == "A");
  std::string all, mapped, back;
  for (int b = 0; b < 256; ++b) {
    all += char(b);
    mapped += m[b];
  }
  REQUIRE(text::gpt2_unicode_to_bytes(mapped, back));
  CHECK(back == all);
  CHECK_FALSE(text::gpt2_unicode_to_bytes(" ", back));  // space itself is not in the image
  CHECK_FALSE(text::gpt2_unicode_to_bytes("\xe2\x82\xac", back));
}

TEST_CASE("protobuf reader rejects malformed messages") {
  const auto read_all = [](std::string_view buf) {
    text::ProtoReader r(buf, "t.model");
    text::ProtoField f;
    int n = 0;
    while (r.next(f)) ++n;
    return n;
  };
  CHECK(read_all(std::string_view("\x08\x96\x01\x12\x02hi", 7)) == 2);
  CHECK_THROWS_AS(read_all("\x08"), Error);                                              // truncated varint
  CHECK_THROWS_AS(read_all("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), Error);  // 11 bytes
  CHECK_THROWS_AS(read_all("\x12\x05hi"), Error);                                        // length past end
  CHECK_THROWS_AS(read_all("\x12\xff\xff\xff\xff\x0f"), Error);
  CHECK_THROWS_AS(read_all("\x0b"), Error);                           // group
  CHECK_THROWS_AS(read_all("\x0d\x01\x02"), Error);                   // truncated fixed32
  CHECK_THROWS_AS(read_all(std::string_view("\x00\x01", 2)), Error);  // field 0
}

TEST_CASE("SentencePiece decode conventions and special tokens") {
  if (!test::have_shared("tokenizers/llama2-spm/tokenizer.model")) return;
  const Tokenizer tok(load_tokenizer_spm_model(test::shared_dir() / "tokenizers/llama2-spm/tokenizer.model"));
  CHECK(tok.decode_token(1).empty());              // <s>: control
  CHECK(tok.decode_token(0) == " \xe2\x81\x87 ");  // <unk>: sentencepiece's surface
  CHECK(tok.decode_token(3 + 0x41) == "A");        // <0x41>
  CHECK(tok.decode_token(-1).empty());
  CHECK(tok.decode_token(1 << 20).empty());
  const auto hello = tok.encode("Hello", false);
  CHECK(tok.decode_token(hello[0]) == " Hello");  // one token keeps its space
  CHECK(tok.decode(hello) == "Hello");            // a sequence drops the dummy prefix
  CHECK(tok.encode("Hello") == std::vector<int32_t>{1, 15043});
  CHECK(tok.encode("", true).size() == 1);
  CHECK(tok.encode("", false).empty());
  // parse_special: control-token text becomes the token; each segment after a special
  // token gets the dummy prefix (llama.cpp / HF legacy), which decode removes again.
  const auto ids = tok.encode("<s>Hello</s>world", false, true);
  CHECK(ids == std::vector<int32_t>{1, 15043, 2, 3186});
  CHECK(tok.decode(ids) == "Helloworld");
  CHECK(tok.encode("<s>", false, false) != std::vector<int32_t>{1});
  CHECK(tok.is_eog(2));
  CHECK_FALSE(tok.is_eog(1));
  CHECK_FALSE(tok.is_eog(-5));
}

TEST_CASE("round trips on random UTF-8 and random bytes never crash") {
  std::mt19937 rng(42);
  for (auto& [name, tok] : real_tokenizers()) {
    INFO(name);
    for (int it = 0; it < 100; ++it) {
      const std::string s = random_utf8(rng, 1 + rng() % 60);
      const auto ids = tok.encode(s, true, it % 2 == 0);
      for (int32_t id : ids) REQUIRE((id >= 0 && id < tok.n_vocab()));
      CHECK(tok.decode(ids) == s);
    }
    for (int it = 0; it < 100; ++it) {
      std::string s = random_bytes(rng, 1 + rng() % 60);
      for (size_t p; (p = s.find("\xe2\x96\x81")) != std::string::npos;) s[p] = 'x';
      const auto ids = tok.encode(s, false);
      for (int32_t id : ids) REQUIRE((id >= 0 && id < tok.n_vocab()));
      CHECK(tok.decode(ids) == s);  // byte-level BPE and SentencePiece byte fallback are lossless
    }
    // A long run of one character and of whitespace (regex backtracking, merge queues).
    const std::string spaces(5000, ' '), as(5000, 'a'),
        mixed = std::string(3000, ' ') + "x" + std::string(3000, '\n');
    for (const std::string* s : {&spaces, &as, &mixed}) CHECK(tok.decode(tok.encode(*s, false)) == *s);
  }
}

TEST_CASE("loaders reject corrupt files with kmq::Error") {
  const auto tmp = test::temp_path("corrupt");
  std::mt19937 rng(3);
  const auto expect_error = [&](const std::function<void()>& load) {
    try {
      load();
      return false;
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find(tmp.string()) != std::string::npos);
      return true;
    }
  };
  // SentencePiece protobuf: truncations and random byte flips either load or throw.
  if (test::have_shared("models/stories260K/tok512.model")) {
    const std::string good = read_text_file(test::shared_dir() / "models/stories260K/tok512.model");
    int errors = 0;
    for (int it = 0; it < 200; ++it) {
      std::string bad = good;
      if (it % 2 == 0)
        bad.resize(rng() % good.size());
      else
        for (int k = 0; k < 4; ++k) bad[rng() % bad.size()] = char(rng());
      write_file(tmp, bad);
      try {
        const Tokenizer tok(load_tokenizer_spm_model(tmp));
        (void)tok.decode(tok.encode("Once upon a time \xff", true, true));
      } catch (const Error&) {
        ++errors;
      }
    }
    CHECK(errors > 50);
    write_file(tmp, "");
    CHECK(expect_error([&] { load_tokenizer_spm_model(tmp); }));
  }
  // llama2.c tokenizer.bin: truncations and bad lengths.
  if (test::have_shared("models/stories260K/tok512.bin")) {
    const std::string good = read_text_file(test::shared_dir() / "models/stories260K/tok512.bin");
    for (size_t cut : {size_t(0), size_t(3), size_t(9), good.size() / 2, good.size() - 1}) {
      write_file(tmp, good.substr(0, cut));
      CHECK(expect_error([&] { load_tokenizer_llama2c(tmp, 512); }));
    }
    std::string bad = good;
    bad[4 + 4] = '\x7f';  // first token length
    write_file(tmp, bad);
    CHECK(expect_error([&] { load_tokenizer_llama2c(tmp, 512); }));
    write_file(tmp, good);
    CHECK(expect_error([&] { load_tokenizer_llama2c(tmp, 513); }));
    CHECK(load_tokenizer_llama2c(tmp, 0).tokens.size() == 512);  // <= 0: until end of file
  }
  // tiktoken.
  for (const char* bad :
       {"IQ== x\n", "IQ==\n", "!!!! 0\n", "IQ== 0\nIQ== 0\n", "IQ== 99999999\n", "IQ== -1\n"}) {
    write_file(tmp, bad);
    CHECK(expect_error([&] { load_tokenizer_tiktoken(tmp); }));
  }
  // tokenizer.json.
  for (
      const char* bad : {
          "{",
          "[]",
          R"({"model": {"type": "Unigram", "vocab": []}})",
          R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",  // no pre-tokenizer kind
          R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}})",
          R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"a": 99999999}, "merges": []}})",
          R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})",
          R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a+)+$"}}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
          R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {" ": 0}, "merges": []}})",
      }) {
    write_file(tmp, bad);
    CHECK(expect_error([&] { load_tokenizer_hf_json(tmp); }));
  }
  std::filesystem::remove(tmp);
  CHECK(expect_error([&] { load_tokenizer_hf_dir(tmp); }));  // missing directory
}

TEST_CASE("HF directory: tokenizer.model kind detection and tokenizer_config.json") {
  if (!test::have_shared("models/stories260K/tok512.model") || !test::have_shared("tokenizers/llama3-tiktoken/tokenizer.model"))
    return;
  namespace fs = std::filesystem;
  const auto dir = test::temp_path("hfdir");
  fs::create_directories(dir);
  // tiktoken text in tokenizer.model.
  fs::copy_file(test::shared_dir() / "tokenizers/llama3-tiktoken/tokenizer.model", dir / "tokenizer.model",
                fs::copy_options::overwrite_existing);
  const TokenizerData tt = load_tokenizer_hf_dir(dir);
  CHECK(tt.kind == TokenizerKind::kBpe);
  CHECK(tt.tokens.size() == 128256);
  CHECK(tt.bos_id == 128000);
  // SentencePiece protobuf, plus a config that adds a token, names templates, and a
  // generation config with extra end ids.
  fs::copy_file(test::shared_dir() / "models/stories260K/tok512.model", dir / "tokenizer.model",
                fs::copy_options::overwrite_existing);
  write_file(dir / "tokenizer_config.json", R"({
    "add_bos_token": false, "add_eos_token": true,
    "bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": null,
    "added_tokens_decoder": {"512": {"content": "<|im_end|>", "special": true},
                             "513": {"content": "<tool>", "special": false}},
    "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  write_file(dir / "generation_config.json", R"({"eos_token_id": [2, 513]})");
  const TokenizerData d = load_tokenizer_hf_dir(dir);
  CHECK(d.kind == TokenizerKind::kSpm);
  REQUIRE(d.tokens.size() == 514);
  CHECK(d.types[512] == TokenType::kControl);
  CHECK(d.types[513] == TokenType::kUserDefined);
  CHECK(d.chat_template == "D");
  CHECK_FALSE(d.add_bos);
  CHECK(d.add_eos);
  CHECK(d.eog_ids == std::vector<int32_t>{2, 512, 513});
  const Tokenizer tok(d);
  CHECK(tok.encode("Once", true) == std::vector<int32_t>{403, 2});
  // <|im_end|> is control: only with parse_special. <tool> is user-defined: always a piece.
  CHECK(tok.encode("Once<|im_end|>", false, true) == std::vector<int32_t>{403, 512});
  CHECK(tok.encode("Once<|im_end|>", false, false).size() > 2);
  const auto tool = tok.encode("Once<tool>upon", false, false);
  CHECK(std::count(tool.begin(), tool.end(), 513) == 1);
  CHECK(tok.decode(tool) == "Once<tool>upon");
  fs::remove_all(dir);
}

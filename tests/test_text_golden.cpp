// Tokenizers against golden ids computed by Hugging Face tokenizers / tiktoken /
// sentencepiece (models/*/golden.json, tokenizers/llama3-hf/golden.json), the loaders of
// Hugging Face directories, and the speed of encoding a whole book.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>

#include "kmq/tokenizer.h"
#include "test_util.h"
#include "util/mmap_file.h"

using namespace kmq;
using Json = nlohmann::json;

namespace {

Json read_json(const std::filesystem::path& p) { return Json::parse(read_text_file(p)); }

std::vector<int32_t> ids_of(const Json& j) { return j.get<std::vector<int32_t>>(); }

// The Llama-3 tokenizer.json is stored gzipped; unpack it once per test run.
std::filesystem::path llama3_hf_dir() {
  const auto dir = test::temp_path("llama3-hf");
  std::filesystem::create_directories(dir);
  const auto src = test::shared_dir() / "tokenizers/llama3-hf";
  if (!std::filesystem::exists(dir / "tokenizer.json")) {
    const std::string cmd = fmt::format("gunzip -c '{}' > '{}'", (src / "tokenizer.json.gz").string(),
                                        (dir / "tokenizer.json").string());
    REQUIRE(std::system(cmd.c_str()) == 0);
    std::filesystem::copy_file(src / "tokenizer_config.json", dir / "tokenizer_config.json",
                               std::filesystem::copy_options::overwrite_existing);
  }
  return dir;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST_CASE("kmq-novels-51m: golden tokenizer ids and prompts") {
  if (!test::have_shared("models/kmq-novels-51m/golden.json")) return;
  const auto dir = test::shared_dir() / "models/kmq-novels-51m";
  const Tokenizer tok(load_tokenizer_hf_dir(dir));
  const auto& d = tok.data();
  CHECK(d.kind == TokenizerKind::kBpe);
  CHECK(d.pre_tokenizer == "gpt2");
  CHECK(d.bos_id == 50256);
  CHECK(d.eos_id == 50256);
  CHECK(d.add_bos);
  CHECK(tok.is_eog(50256));
  const Json g = read_json(dir / "golden.json");
  for (const auto& t : g["tokenizer"]) {
    const std::string text = t["text"];
    INFO(text);
    // Hugging Face always splits added tokens out of the text: parse_special = true.
    CHECK(tok.encode(text, false, true) == ids_of(t["ids_no_special"]));
    CHECK(tok.encode(text, true, true) == ids_of(t["ids_with_bos"]));
  }
  for (const auto& p : g["prompts"]) {
    const std::string text = p["prompt"];
    INFO(text);
    CHECK(tok.encode(text) == ids_of(p["ids"]));
  }
}

TEST_CASE("GPT-2: tokenizer.json and vocab.json+merges.txt agree") {
  if (!test::have_shared("tokenizers/gpt2-bpe/gpt2_vocab.json") ||
      !test::have_shared("models/kmq-novels-51m/tokenizer.json"))
    return;
  const auto dir = test::shared_dir() / "tokenizers/gpt2-bpe";
  const auto a = load_tokenizer_gpt2_files(dir / "gpt2_vocab.json", dir / "gpt2_merges.txt");
  const auto b = load_tokenizer_hf_json(test::shared_dir() / "models/kmq-novels-51m/tokenizer.json");
  CHECK(a.tokens == b.tokens);
  CHECK(a.types == b.types);
  CHECK(a.merges == b.merges);
  CHECK(a.pre_tokenizer == b.pre_tokenizer);
}

TEST_CASE("WikiText-2 and the held-out novel: token counts and encode speed") {
  if (!test::have_shared("text/wiki.test.raw") || !test::have_shared("models/kmq-novels-51m/golden.json"))
    return;
  const auto dir = test::shared_dir() / "models/kmq-novels-51m";
  const Tokenizer tok(load_tokenizer_hf_dir(dir));
  const Json g = read_json(dir / "golden.json");
  const std::string wiki = read_text_file(test::shared_dir() / "text/wiki.test.raw");
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok.encode(wiki, /*add_special=*/false);
  const double secs = seconds_since(t0);
  MESSAGE(fmt::format("wiki.test.raw: {} bytes -> {} tokens in {:.3f} s", wiki.size(), ids.size(), secs));
  CHECK(ids.size() == g["wikitext2_test"]["text_tokens"].get<size_t>());
  CHECK(secs < 2.0);
  CHECK(tok.decode(ids) == wiki);
  const std::string novel = read_text_file(test::shared_dir() / "text/heldout_Stevenson_Treasure_1883.txt");
  const auto ids2 = tok.encode(novel, false);
  MESSAGE(fmt::format("heldout: {} tokens without BOS", ids2.size()));
  CHECK(ids2.size() == g["heldout_treasure"]["text_tokens"].get<size_t>());
}

TEST_CASE("WikiText-2 with the Llama-2 and Llama-3 tokenizers: speed and round trip") {
  if (!test::have_shared("text/wiki.test.raw")) return;
  const std::string wiki = read_text_file(test::shared_dir() / "text/wiki.test.raw");
  const auto s = test::shared_dir();
  std::vector<std::pair<std::string, std::function<TokenizerData()>>> cases;
  if (test::have_shared("tokenizers/llama2-spm/tokenizer.model"))
    cases.emplace_back("llama2-spm",
                       [&] { return load_tokenizer_spm_model(s / "tokenizers/llama2-spm/tokenizer.model"); });
  if (test::have_shared("tokenizers/llama3-tiktoken/tokenizer.model"))
    cases.emplace_back("llama3-tiktoken", [&] {
      return load_tokenizer_tiktoken(s / "tokenizers/llama3-tiktoken/tokenizer.model");
    });
  for (const auto& [name, load] : cases) {
    const Tokenizer tok(load());
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(wiki, false);
    const double secs = seconds_since(t0);
    MESSAGE(fmt::format("{}: wiki.test.raw -> {} tokens in {:.3f} s", name, ids.size(), secs));
    CHECK(secs < 4.0);  // generous: sanitizer builds run this too
    CHECK(tok.decode(ids) == wiki);
  }
}

// SentencePiece encodes word by word when no piece has U+2581 after another character; a
// vocabulary with one such piece takes the whole-text path. Both must agree.
TEST_CASE("SentencePiece: word-by-word encoding equals whole-text encoding") {
  if (!test::have_shared("text/wiki.test.raw") || !test::have_shared("tokenizers/llama2-spm/tokenizer.model")) return;
  const std::string wiki = read_text_file(test::shared_dir() / "text/wiki.test.raw").substr(0, 200000);
  TokenizerData d = load_tokenizer_spm_model(test::shared_dir() / "tokenizers/llama2-spm/tokenizer.model");
  const Tokenizer words(d);
  d.tokens.push_back("\x01\xE2\x96\x81\x01");  // never occurs in the text
  d.scores.push_back(-1e9f);
  d.types.push_back(TokenType::kUnused);
  const Tokenizer whole(d);
  CHECK(words.encode(wiki) == whole.encode(wiki));
}

TEST_CASE("stories260K: tok512.model, tok512.bin and the HF directory") {
  if (!test::have_shared("models/stories260K/golden.json") ||
      !test::have_shared("models/stories260K-hf/tokenizer.model"))
    return;
  const auto dir = test::shared_dir() / "models/stories260K";
  const Json g = read_json(dir / "golden.json");
  const Tokenizer from_model(load_tokenizer_spm_model(dir / "tok512.model"));
  const Tokenizer from_bin(load_tokenizer_llama2c(dir / "tok512.bin", 512));
  const Tokenizer from_hf(load_tokenizer_hf_dir(test::shared_dir() / "models/stories260K-hf"));
  for (const Tokenizer* tok : {&from_model, &from_bin, &from_hf}) {
    const auto& d = tok->data();
    CHECK(tok->n_vocab() == 512);
    CHECK(d.kind == TokenizerKind::kSpm);
    CHECK(d.bos_id == 1);
    CHECK(d.eos_id == 2);
    CHECK(d.unk_id == 0);
    CHECK(d.byte_fallback);
    CHECK(tok->is_eog(2));
    for (const auto& [text, ids] : g["encode"].items()) {
      INFO(text);
      CHECK(tok->encode(text, false) == ids_of(ids));
      auto with_bos = ids_of(ids);
      with_bos.insert(with_bos.begin(), 1);
      CHECK(tok->encode(text, true) == with_bos);
      CHECK(tok->decode(with_bos) == text);
    }
    CHECK(tok->decode(ids_of(g["greedy_prompt_ids"])) == "Once upon a time");
  }
  // The .model and the .bin describe the same pieces and scores.
  CHECK(from_model.data().tokens == from_bin.data().tokens);
  CHECK(from_model.data().scores == from_bin.data().scores);
  CHECK(from_model.data().types == from_bin.data().types);
  CHECK(from_hf.data().add_bos);
  // sentencepiece's normalizer default (kept by tok512.model) collapses spaces; llama2.c's
  // encoder does not.
  CHECK(from_model.data().remove_extra_whitespaces);
  CHECK_FALSE(from_bin.data().remove_extra_whitespaces);
  CHECK(from_model.encode("  Once   upon ", false) == from_model.encode("Once upon", false));
}

TEST_CASE("Llama-3: Hugging Face tokenizer.json agrees with tiktoken and with its golden ids") {
  if (!test::have_shared("tokenizers/llama3-hf/tokenizer.json.gz") ||
      !test::have_shared("tokenizers/llama3-tiktoken/tokenizer.model"))
    return;
  const auto hf_dir = llama3_hf_dir();
  const Tokenizer hf(load_tokenizer_hf_dir(hf_dir));
  std::filesystem::remove_all(hf_dir);  // 17 MB
  const Tokenizer tt(
      load_tokenizer_tiktoken(test::shared_dir() / "tokenizers/llama3-tiktoken/tokenizer.model"));
  const Json g = read_json(test::shared_dir() / "tokenizers/llama3-hf/golden.json");
  CHECK(hf.n_vocab() == 128256);
  CHECK(hf.data().tokens == tt.data().tokens);  // same bytes, same special-token list
  CHECK(hf.data().merges.empty());              // ignore_merges + rank-ordered merges -> ranks
  CHECK(hf.data().pre_tokenizer == "llama3");
  CHECK(!hf.data().chat_template.empty());
  for (const Tokenizer* tok : {&hf, &tt}) {
    const auto& d = tok->data();
    CHECK(d.bos_id == 128000);
    CHECK(d.add_bos);
    CHECK(tok->is_eog(128001));
    CHECK(tok->is_eog(128009));
    CHECK(tok->is_eog(128008));
    CHECK_FALSE(tok->is_eog(128006));
    for (const auto& p : g["plain"]) {
      const std::string text = p["text"];
      INFO(text);
      CHECK(tok->encode(text, false) == ids_of(p["ids"]));
      CHECK(tok->encode(text, true) == ids_of(p["ids_with_bos"]));
      CHECK(tok->decode(tok->encode(text, false)) == text);
    }
    for (const auto& p : g["with_specials"]) {
      const std::string text = p["text"];
      CHECK(tok->encode(text, false, true) == ids_of(p["ids"]));
      // Without parse_special the markers are plain text.
      const auto plain = tok->encode(text, false, false);
      CHECK(std::find(plain.begin(), plain.end(), 128006) == plain.end());
    }
  }
  CHECK(tt.data().eos_id == 128001);
  CHECK(hf.data().eos_id == 128009);       // tokenizer_config.json's eos_token is <|eot_id|>
  CHECK(tt.decode_token(128009).empty());  // control tokens decode to ""
}

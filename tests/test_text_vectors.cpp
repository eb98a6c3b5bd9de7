// Tokenizer test vectors from llama.cpp (tokenizers/test-vectors/*.inp/.out): inputs are
// separated by "\n__ggml_vocab_test__\n", each output line holds the ids without BOS.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>
#include <unordered_map>

#include "kmq/tokenizer.h"
#include "test_util.h"
#include "util/mmap_file.h"

using namespace kmq;

namespace {

struct Vector {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Vector> read_vectors(const std::string& name) {
  const auto dir = test::shared_dir() / "tokenizers/test-vectors";
  std::string inp = read_text_file(dir / (name + ".inp"));
  const std::string out = read_text_file(dir / (name + ".out"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<Vector> v;
  for (size_t pos; (pos = inp.find(sep)) != std::string::npos;) {
    v.push_back({inp.substr(0, pos), {}});
    inp.erase(0, pos + sep.size());
  }
  std::istringstream lines(out);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line)) {
    REQUIRE(i < v.size());
    std::istringstream ids(line);
    for (int32_t id; ids >> id;) v[i].ids.push_back(id);
    ++i;
  }
  REQUIRE(i == v.size());
  return v;
}

// Checks every vector; also that decode(encode(text)) == text.
void check_vectors(const Tokenizer& tok, const std::string& name, bool round_trip = true) {
  const auto vectors = read_vectors(name);
  CHECK(vectors.size() >= 40);
  int failed = 0;
  for (const auto& v : vectors) {
    const auto ids = tok.encode(v.text, /*add_special=*/false);
    if (ids != v.ids) {
      ++failed;
      MESSAGE(fmt::format("{}: text '{}'\n  got      {}\n  expected {}", name, v.text, fmt::join(ids, " "),
                          fmt::join(v.ids, " ")));
    }
    if (round_trip) CHECK(tok.decode(ids) == v.text);
  }
  CHECK(failed == 0);
}

}  // namespace

TEST_CASE("llama-spm vectors (Llama-2 SentencePiece tokenizer.model)") {
  if (!test::have_shared("tokenizers/llama2-spm/tokenizer.model")) return;
  const Tokenizer tok(load_tokenizer_spm_model(test::shared_dir() / "tokenizers/llama2-spm/tokenizer.model"));
  CHECK(tok.n_vocab() == 32000);
  check_vectors(tok, "ggml-vocab-llama-spm.gguf");
  check_vectors(tok, "ggml-vocab-phi-3.gguf");  // Phi-3 shares the Llama-2 vocabulary
}

TEST_CASE("llama-spm vectors (llama2.c tokenizer.bin)") {
  if (!test::have_shared("tokenizers/llama2-spm/tokenizer.bin")) return;
  const Tokenizer tok(
      load_tokenizer_llama2c(test::shared_dir() / "tokenizers/llama2-spm/tokenizer.bin", 32000));
  check_vectors(tok, "ggml-vocab-llama-spm.gguf");
}

TEST_CASE("gpt-2 vectors (vocab.json + merges.txt)") {
  if (!test::have_shared("tokenizers/gpt2-bpe/gpt2_vocab.json")) return;
  const auto dir = test::shared_dir() / "tokenizers/gpt2-bpe";
  const Tokenizer tok(load_tokenizer_gpt2_files(dir / "gpt2_vocab.json", dir / "gpt2_merges.txt"));
  CHECK(tok.n_vocab() == 50257);
  check_vectors(tok, "ggml-vocab-gpt-2.gguf");
}

TEST_CASE("gpt-2 vectors (kmq-novels-51m tokenizer.json)") {
  if (!test::have_shared("models/kmq-novels-51m/tokenizer.json")) return;
  const Tokenizer tok(load_tokenizer_hf_dir(test::shared_dir() / "models/kmq-novels-51m"));
  check_vectors(tok, "ggml-vocab-gpt-2.gguf");
}

TEST_CASE("llama-bpe vectors (Llama-3 tiktoken tokenizer.model)") {
  if (!test::have_shared("tokenizers/llama3-tiktoken/tokenizer.model")) return;
  const Tokenizer tok(
      load_tokenizer_tiktoken(test::shared_dir() / "tokenizers/llama3-tiktoken/tokenizer.model"));
  CHECK(tok.n_vocab() == 128256);
  check_vectors(tok, "ggml-vocab-llama-bpe.gguf");
}

// A Hugging Face style tokenizer.json for Llama-2, built here from tokenizer.model the way
// the transformers converter does (merges ordered by the merged piece's score), so the
// SentencePiece-style tokenizer.json path is held to the same vectors.
TEST_CASE("llama-spm vectors (SentencePiece-style tokenizer.json)") {
  if (!test::have_shared("tokenizers/llama2-spm/tokenizer.model")) return;
  const TokenizerData spm =
      load_tokenizer_spm_model(test::shared_dir() / "tokenizers/llama2-spm/tokenizer.model");
  nlohmann::json vocab = nlohmann::json::object();
  std::unordered_map<std::string, int32_t> ids;
  for (size_t i = 0; i < spm.tokens.size(); ++i) {
    vocab[spm.tokens[i]] = i;
    if (spm.types[i] == TokenType::kNormal) ids.emplace(spm.tokens[i], int32_t(i));
  }
  struct M {
    float score;
    int32_t piece, left, right;
  };
  std::vector<M> ms;
  for (const auto& [piece, id] : ids) {
    for (size_t k = 1; k < piece.size(); ++k) {
      if ((uint8_t(piece[k]) & 0xC0) == 0x80) continue;  // split at character boundaries only
      const auto l = ids.find(piece.substr(0, k)), r = ids.find(piece.substr(k));
      if (l != ids.end() && r != ids.end()) ms.push_back({spm.scores[id], id, l->second, r->second});
    }
  }
  std::sort(ms.begin(), ms.end(), [](const M& a, const M& b) {
    return std::tie(b.score, a.piece, a.left, a.right) < std::tie(a.score, b.piece, b.left, b.right);
  });
  nlohmann::json merges = nlohmann::json::array();
  for (const M& m : ms) merges.push_back(spm.tokens[m.left] + " " + spm.tokens[m.right]);
  const nlohmann::json j = {
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
        {{"id", 1}, {"content", "<s>"}, {"special", true}},
        {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}}}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", merges},
        {"unk_token", "<unk>"},
        {"byte_fallback", true}}},
  };
  const auto path = test::temp_path("llama2-tokenizer.json");
  {
    std::ofstream f(path);
    f << j.dump();
  }
  const TokenizerData d = load_tokenizer_hf_json(path);
  std::filesystem::remove(path);
  CHECK(d.kind == TokenizerKind::kSpm);
  CHECK(d.types == spm.types);
  CHECK(d.bos_id == 1);
  CHECK(d.unk_id == 0);
  CHECK(d.add_bos);
  CHECK(d.add_dummy_prefix);
  const Tokenizer tok(d);
  check_vectors(tok, "ggml-vocab-llama-spm.gguf");
}

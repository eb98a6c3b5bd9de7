// End to end against golden outputs of independent implementations: the shared 51M Llama
// (Hugging Face transformers) and stories260K (float64 numpy), converted by the library
// and run on the CPU backend.
#include <doctest/doctest.h>

#include <cmath>
#include <fmt/format.h>
#include <map>
#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "kmq/model.h"
#include "kmq/runtime.h"
#include "test_util.h"
#include "util/mmap_file.h"

using namespace kmq;
using nlohmann::json;

namespace {

json load_json(const std::string& rel) { return json::parse(read_text_file(test::shared_dir() / rel)); }

// Converts once per process and caches the path.
std::filesystem::path converted(const std::string& key, const std::function<SourceModel()>& open,
                                const ConvertOptions& o) {
  static std::map<std::string, std::filesystem::path> cache;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto path = test::temp_path(key + ".kmq");
  std::filesystem::remove(path);
  convert_model(open(), path, o);
  cache[key] = path;
  return path;
}

ConvertOptions float_options(DType t) {
  ConvertOptions o;
  o.float_only = true;
  o.float_dtype = t;
  o.threads = 2;
  return o;
}

std::filesystem::path novels_bf16() {
  return converted("novels-bf16", [] { return open_hf_dir(test::shared_dir() / "models/kmq-novels-51m"); },
                   float_options(DType::kBF16));
}

std::vector<int32_t> greedy(Model& m, const std::vector<int32_t>& prompt, int n) {
  auto s = m.new_session();
  GenerateOptions go;
  go.max_tokens = n;
  go.sampler.temperature = 0;
  go.stop_at_eog = false;
  return generate(*s, m, prompt, go, nullptr).output_ids;
}

}  // namespace

TEST_CASE("e2e: kmq-novels-51m bf16 reproduces transformers' ids, logits and greedy tokens") {
  if (!test::have_shared("models/kmq-novels-51m/golden.json")) return;
  auto g = load_json("models/kmq-novels-51m/golden.json");
  auto model = Model::load(novels_bf16(), ModelOptions{"cpu", 2});
  const auto& tok = model->tokenizer();
  for (const auto& t : g["tokenizer"]) {
    const std::string text = t["text"];
    CHECK_MESSAGE(tok.encode(text, false, true) == t["ids_no_special"].get<std::vector<int32_t>>(), text);
    CHECK_MESSAGE(tok.encode(text, true, true) == t["ids_with_bos"].get<std::vector<int32_t>>(), text);
  }
  for (const auto& p : g["prompts"]) {
    const std::string prompt = p["prompt"];
    auto ids = tok.encode(prompt, true);
    REQUIRE(ids == p["ids"].get<std::vector<int32_t>>());
    auto s = model->new_session();
    std::vector<float> logits;
    s->eval(ids, &logits, 1);
    double max_err = 0;
    const auto top_ids = p["top40_ids"].get<std::vector<int32_t>>();
    const auto top_logits = p["top40_logits"].get<std::vector<double>>();
    for (size_t i = 0; i < top_ids.size(); ++i) max_err = std::max(max_err, std::abs(logits[top_ids[i]] - top_logits[i]));
    CHECK_MESSAGE(max_err < 1e-2, prompt, ": max |logit error| over the top 40 = ", max_err);
    double mx = -1e30, se = 0;
    for (float v : logits) mx = std::max(mx, double(v));
    for (float v : logits) se += std::exp(double(v) - mx);
    CHECK(std::abs(std::log(se) + mx - p["last_logsumexp"].get<double>()) < 1e-2);
    auto out = greedy(*model, ids, 48);
    CHECK_MESSAGE(out == p["greedy48_ids"].get<std::vector<int32_t>>(), prompt);
    CHECK(tok.decode(out) == p["greedy48_text"].get<std::string>());
  }
}

TEST_CASE("e2e: kmq-novels-51m perplexity over the first chunks matches the reference within 0.1%") {
  if (!test::have_shared("models/kmq-novels-51m/golden_partial.json")) return;
  auto g = load_json("models/kmq-novels-51m/golden_partial.json");
  auto model = Model::load(novels_bf16(), ModelOptions{"cpu", 2});
  for (auto [file, key] : {std::pair{"wiki.test.raw", "wiki.test.raw"},
                           std::pair{"heldout_Stevenson_Treasure_1883.txt", "heldout_Stevenson_Treasure_1883.txt"}}) {
    const auto text = read_text_file(test::shared_dir() / "text" / file);
    auto tokens = model->tokenizer().encode(text, false, true);
    const auto& ref = g[key]["ctx512_first8"];
    CHECK(int64_t(tokens.size()) == ref["text_tokens"].get<int64_t>());
    PerplexityOptions po;
    po.n_ctx = 512;
    po.max_chunks = 8;
    auto r = perplexity(*model, tokens, po);
    CHECK(r.tokens_scored == ref["tokens_scored"].get<int64_t>());
    const double want = ref["ppl"].get<double>();
    CHECK_MESSAGE(std::abs(r.ppl / want - 1) < 1e-3, file, ": ppl ", r.ppl, " vs ", want);
    CHECK(std::abs(r.nll_stderr / ref["nll_stderr"].get<double>() - 1) < 1e-2);
  }
}

TEST_CASE("e2e: stories260K from both llama2.c files and from its Hugging Face packaging") {
  if (!test::have_shared("models/stories260K/golden.json") || !test::have_shared("models/stories260K-hf/golden.json"))
    return;
  auto g = load_json("models/stories260K/golden.json");
  auto ghf = load_json("models/stories260K-hf/golden.json");
  const auto dir = test::shared_dir() / "models";
  std::vector<std::pair<std::string, std::function<SourceModel()>>> sources = {
      {"s260-legacy", [&] { return open_llama2c(dir / "stories260K/stories260K.bin", dir / "stories260K/tok512.bin"); }},
      {"s260-v1", [&] { return open_llama2c(dir / "stories260K/stories260K_v1.bin", dir / "stories260K/tok512.bin"); }},
      {"s260-hf", [&] { return open_hf_dir(dir / "stories260K-hf"); }},
  };
  for (auto& [key, open] : sources) {
    CAPTURE(key);
    auto model = Model::load(converted(key, open, float_options(DType::kF32)), ModelOptions{"cpu", 1});
    for (auto& [text, ids] : g["encode"].items())
      CHECK_MESSAGE(model->tokenizer().encode(text, false) == ids.get<std::vector<int32_t>>(), text);
    auto prompt = g["greedy_prompt_ids"].get<std::vector<int32_t>>();
    CHECK(model->tokenizer().encode("Once upon a time", true) == prompt);
    auto out = greedy(*model, prompt, 48);
    CHECK(out == g["greedy_next_48_ids"].get<std::vector<int32_t>>());
    // logits after BOS (position 0) and at later positions (RoPE convention)
    auto s = model->new_session();
    std::vector<float> logits;
    s->eval({1}, &logits, 1);
    const auto& lb = g["logits_after_BOS"];
    CHECK(std::abs(logits[403] - lb["max"].get<double>()) < 1e-4);
    for (int i = 0; i < 5; ++i) CHECK(std::abs(logits[size_t(i)] - lb["first5"][i].get<double>()) < 1e-4);
    for (const char* k : {"logits_after_prompt", "logits_pos51"}) {
      if (!ghf.contains(k)) continue;
      const auto& ref = ghf[k];
      std::vector<int32_t> seq;
      if (ref.contains("input_ids") && ref["input_ids"].is_array()) {
        seq = ref["input_ids"].get<std::vector<int32_t>>();
      } else {
        seq = prompt;
        seq.insert(seq.end(), out.begin(), out.end());
        seq.resize(size_t(ref["position"].get<int64_t>() + 1));
      }
      auto s2 = model->new_session();
      s2->eval(seq, &logits, 1);
      CHECK_MESSAGE(std::abs(logits[size_t(ref["argmax"].get<int>())] - ref["max"].get<double>()) < 1e-4, k);
      for (int i = 0; i < 5; ++i) CHECK(std::abs(logits[size_t(i)] - ref["first5"][i].get<double>()) < 1e-4);
    }
  }
}

TEST_CASE("e2e: kmq-novels-51m at 4.25 bits loses at most 3% perplexity on the held-out novel") {
  if (!test::have_shared("models/kmq-novels-51m/golden_partial.json")) return;
  auto g = load_json("models/kmq-novels-51m/golden_partial.json");
  ConvertOptions o;
  o.quant.bits = 4;
  o.quant.scope = CodebookScope::kTensor;
  o.quant.scale_block = 64;
  o.threads = 2;
  auto path = converted("novels-q4", [] { return open_hf_dir(test::shared_dir() / "models/kmq-novels-51m"); }, o);
  auto model = Model::load(path, ModelOptions{"cpu", 2});
  const auto text = read_text_file(test::shared_dir() / "text/heldout_Stevenson_Treasure_1883.txt");
  PerplexityOptions po;
  po.max_chunks = 16;
  auto r = perplexity(*model, model->tokenizer().encode(text, false, true), po);
  const double ref = g["heldout_Stevenson_Treasure_1883.txt"]["ctx512_first16"]["ppl"].get<double>();
  MESSAGE("q4 tensor sb64: ppl ", r.ppl, " vs float ", ref, " (", 100 * (r.ppl / ref - 1), "%)");
  CHECK(r.ppl / ref - 1 < 0.03);
  CHECK(r.ppl / ref - 1 > -0.01);  // quantization should not improve much; catches a broken reference
}

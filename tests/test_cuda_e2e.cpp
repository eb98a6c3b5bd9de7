// End to end on the GPU. (1) The shared 51M Llama converted to bf16 reproduces the
// transformers golden outputs (prompt ids, top-40 logits, greedy 48 tokens) and the
// reference perplexity within 0.1%, as the CPU does (test_e2e_golden.cpp); it needs the
// shared checkpoint. (2) The bundled 4.25-bit model (models/kmq-novels-51m-q4.kmq) gives
// on the GPU the CPU reference's (KMQ_ISA=scalar) greedy tokens, logits and perplexity
// (within 0.1%). Both skip
// without a GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "cuda_test_util.h"
#include "kmq/model.h"
#include "kmq/runtime.h"
#include "test_util.h"
#include "util/mmap_file.h"

using namespace kmq;
using nlohmann::json;

namespace {

// The CPU side of the comparisons is the scalar reference (the AVX2 path's lookup tables
// round activations to int8): set before the first kernel-table lookup of the process.
const bool g_scalar_cpu = [] { return ::setenv("KMQ_ISA", "scalar", 1) == 0; }();

json load_json(const std::string& rel) { return json::parse(read_text_file(test::shared_dir() / rel)); }

std::vector<int32_t> greedy(Model& m, const std::vector<int32_t>& prompt, int n) {
  auto s = m.new_session(1024);
  GenerateOptions go;
  go.max_tokens = n;
  go.sampler.temperature = 0;
  go.stop_at_eog = false;
  return generate(*s, m, prompt, go, nullptr).output_ids;
}

PerplexityResult ppl_of(Model& m, const std::string& file, int64_t chunks) {
  const auto text = read_text_file(test::shared_dir() / "text" / file);
  PerplexityOptions po;
  po.n_ctx = 512;
  po.max_chunks = chunks;
  return perplexity(m, m.tokenizer().encode(text, false, true), po);
}

}  // namespace

TEST_CASE("cuda e2e: kmq-novels-51m bf16 reproduces transformers' logits, greedy tokens and perplexity") {
  if (!test::have_gpu()) return;
  if (!test::have_shared("models/kmq-novels-51m/golden.json") ||
      !test::have_shared("models/kmq-novels-51m/model.safetensors.index.json") ||
      !test::have_shared("models/kmq-novels-51m/golden_partial.json"))
    return;
  auto path = test::temp_path("novels-bf16-cuda.kmq");
  std::filesystem::remove(path);
  ConvertOptions o;
  o.float_only = true;
  o.float_dtype = DType::kBF16;
  o.threads = 4;
  convert_model(open_hf_dir(test::shared_dir() / "models/kmq-novels-51m"), path, o);
  auto model = Model::load(path, ModelOptions{"cuda", 0});
  MESSAGE("backend: ", model->backend_name());
  auto g = load_json("models/kmq-novels-51m/golden.json");
  for (const auto& p : g["prompts"]) {
    const std::string prompt = p["prompt"];
    auto ids = model->tokenizer().encode(prompt, true);
    REQUIRE(ids == p["ids"].get<std::vector<int32_t>>());
    auto s = model->new_session(1024);
    std::vector<float> logits;
    s->eval(ids, &logits, 1);
    double max_err = 0;
    const auto top_ids = p["top40_ids"].get<std::vector<int32_t>>();
    const auto top_logits = p["top40_logits"].get<std::vector<double>>();
    for (size_t i = 0; i < top_ids.size(); ++i) max_err = std::max(max_err, std::abs(logits[top_ids[i]] - top_logits[i]));
    CHECK_MESSAGE(max_err < 1e-2, prompt, ": max |logit error| over the top 40 = ", max_err);
    auto out = greedy(*model, ids, 48);
    CHECK_MESSAGE(out == p["greedy48_ids"].get<std::vector<int32_t>>(), prompt);
  }
  auto gp = load_json("models/kmq-novels-51m/golden_partial.json");
  for (const char* file : {"wiki.test.raw", "heldout_Stevenson_Treasure_1883.txt"}) {
    auto r = ppl_of(*model, file, 8);
    const double want = gp[file]["ctx512_first8"]["ppl"].get<double>();
    MESSAGE(file, ": ppl ", r.ppl, " vs reference ", want);
    CHECK_MESSAGE(std::abs(r.ppl / want - 1) < 1e-3, file, ": ppl ", r.ppl, " vs ", want);
  }
}

TEST_CASE("cuda e2e: the bundled 4.25-bit model gives the CPU's greedy tokens, logits and perplexity") {
  if (!test::have_gpu()) return;
  const std::filesystem::path path = std::filesystem::path(KMQ_SOURCE_DIR) / "models/kmq-novels-51m-q4.kmq";
  REQUIRE(std::filesystem::exists(path));
  REQUIRE(g_scalar_cpu);
  auto cpu = Model::load(path, ModelOptions{"cpu", 0});
  auto gpu = Model::load(path, ModelOptions{"cuda", 0});
  MESSAGE("backend: ", gpu->backend_name());
  std::vector<std::string> prompts = {"It was a dark and stormy night; the rain fell in torrents",
                                      "Chapter I\n\n", "\"My dear,\" said Mrs. ", "The"};
  for (const auto& prompt : prompts) {
    CAPTURE(prompt);
    auto ids = cpu->tokenizer().encode(prompt, true);
    std::vector<float> lc, lg;
    auto sc = cpu->new_session(1024), sg = gpu->new_session(1024);
    sc->eval(ids, &lc, 1);
    sg->eval(ids, &lg, 1);
    double max_err = 0;
    for (size_t i = 0; i < lc.size(); ++i) max_err = std::max(max_err, double(std::abs(lc[i] - lg[i])));
    CHECK_MESSAGE(max_err < 2e-2, "max |logit difference| = ", max_err);
    const auto a = greedy(*cpu, ids, 48), b = greedy(*gpu, ids, 48);
    CHECK(a == b);
  }
  if (!test::have_shared("text/heldout_Stevenson_Treasure_1883.txt")) return;
  for (const char* file : {"wiki.test.raw", "heldout_Stevenson_Treasure_1883.txt"}) {
    if (!test::have_shared(std::string("text/") + file)) continue;
    const auto rc = ppl_of(*cpu, file, 8), rg = ppl_of(*gpu, file, 8);
    MESSAGE(file, ": q4 ppl cpu ", rc.ppl, " gpu ", rg.ppl);
    CHECK(rg.tokens_scored == rc.tokens_scored);
    CHECK_MESSAGE(std::abs(rg.ppl / rc.ppl - 1) < 1e-3, file, ": gpu ", rg.ppl, " cpu ", rc.ppl);
  }
}

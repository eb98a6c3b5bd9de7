// The whole-text perplexities of golden.json (WikiText-2 test, 559 chunks; the held-out
// novel, 175 chunks; transformers float32 from the bf16 weights) reproduced within 0.1%
// by the bf16 conversion of kmq-novels-51m. Slow on purpose: about 10-20 minutes on 2 cores.
#include <doctest/doctest.h>

#include <cmath>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "kmq/model.h"
#include "kmq/runtime.h"
#include "test_util.h"
#include "util/mmap_file.h"

using namespace kmq;

TEST_CASE("e2e: kmq-novels-51m bf16 whole-text perplexity equals transformers' within 0.1%") {
  if (!test::have_shared("models/kmq-novels-51m/golden.json")) return;
  auto g = nlohmann::json::parse(read_text_file(test::shared_dir() / "models/kmq-novels-51m/golden.json"));
  auto path = test::temp_path("novels-bf16-full.kmq");
  std::filesystem::remove(path);
  ConvertOptions o;
  o.float_only = true;
  o.float_dtype = DType::kBF16;
  o.threads = 2;
  convert_model(open_hf_dir(test::shared_dir() / "models/kmq-novels-51m"), path, o);
  auto model = Model::load(path, ModelOptions{"cpu", 2});
  for (auto [file, key] : {std::pair{"heldout_Stevenson_Treasure_1883.txt", "heldout_treasure"},
                           std::pair{"wiki.test.raw", "wikitext2_test"}}) {
    const auto& ref = g[key];
    auto tokens = model->tokenizer().encode(read_text_file(test::shared_dir() / "text" / file), false, true);
    CHECK(int64_t(tokens.size()) == ref["text_tokens"].get<int64_t>());
    auto r = perplexity(*model, tokens, PerplexityOptions{});
    MESSAGE(fmt::format("{}: ppl {:.4f} ± {:.4f} vs {:.4f} ({:+.4f}%), {} chunks, {} scored, {:.0f} s", file, r.ppl,
                        r.ppl_stderr, ref["ppl"].get<double>(), 100 * (r.ppl / ref["ppl"].get<double>() - 1), r.chunks,
                        r.tokens_scored, r.seconds));
    CHECK(r.chunks == ref["chunks"].get<int64_t>());
    CHECK(r.tokens_scored == ref["tokens_scored"].get<int64_t>());
    CHECK(std::abs(r.ppl / ref["ppl"].get<double>() - 1) < 1e-3);
    CHECK(std::abs(r.nll_stderr / ref["nll_stderr"].get<double>() - 1) < 1e-2);
  }
}

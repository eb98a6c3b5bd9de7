// Calibration and mixed precision on the shared stories260K model (small: seconds):
// importance has one positive entry per input column of every matrix, and --target-bpw
// lands on its target (within one tensor's step) with the embedding counted.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "calib/calibrate.h"
#include "calib/mixed.h"
#include "calib/refine.h"
#include "convert/convert.h"
#include "test_util.h"

using namespace kmq;

TEST_CASE("calibration importance and mixed precision on stories260K") {
  if (!test::have_shared("models/stories260K-hf/model.safetensors") || !test::have_shared("text/tinystories_sample.txt"))
    return;
  SourceModel src = open_hf_dir(test::shared_dir() / "models/stories260K-hf");
  std::ifstream in(test::shared_dir() / "text/tinystories_sample.txt");
  std::stringstream ss;
  ss << in.rdbuf();
  CalibrationOptions co;
  co.n_ctx = 256;
  co.max_tokens = 1024;
  co.threads = 2;
  const auto toks = calibration_tokens(src, ss.str(), co);
  CHECK(toks.size() == 1024);
  const Calibration cal = calibrate(src, toks, co);
  CHECK(cal.chunks == 4);
  int64_t n_matrices = 0;
  for (const auto& t : src.tensors) {
    if (t.shape.size() != 2) continue;
    ++n_matrices;
    auto it = cal.importance.find(t.name);
    REQUIRE_MESSAGE(it != cal.importance.end(), t.name);
    CHECK(int64_t(it->second.size()) == t.shape[1]);
    for (float v : it->second) CHECK(v >= 0);
    double s = 0;
    for (float v : it->second) s += v;
    CHECK(s > 0);
  }
  CHECK(int64_t(cal.importance.size()) == n_matrices);

  ConvertOptions o;
  o.threads = 2;
  o.quant.scale_block = 32;
  o.importance = &cal.importance;
  BitsPlanInputs pin;
  pin.target_bpw = 2.5;
  pin.tokens = toks;
  pin.n_ctx = co.n_ctx;
  pin.sens_tokens = 64;
  const auto plan = plan_bits(src, o, pin, {});
  o.plan = &plan;
  const auto out = test::temp_path("stories-mixed.kmq");
  const ConvertReport rep = convert_model(src, out, o);
  const double bpw = rep.total_bits / double(rep.n_weights);
  CHECK(bpw <= 2.5 + 1e-9);
  CHECK(bpw > 2.2);  // the greedy fills the budget up to the last upgrade that fits
  bool mixed = false;
  int first = -1;
  for (const auto& [name, c] : plan) {
    if (first < 0) first = c.quant.bits;
    if (c.quant.bits != first) mixed = true;
  }
  CHECK(mixed);
}

// Output-aligned refinement (--refine) on stories260K at 2 bits: every quantized matrix is
// fitted, the file it writes holds exactly those tensors, and the whole model's next-token
// distributions on the calibration text are closer to the float model's than with the
// plain (importance-weighted) fit: the quantity the refinement minimises, layer by layer.
TEST_CASE("output-aligned refinement on stories260K brings the model closer to the float one") {
  if (!test::have_shared("models/stories260K-hf/model.safetensors") || !test::have_shared("text/tinystories_sample.txt"))
    return;
  SourceModel src = open_hf_dir(test::shared_dir() / "models/stories260K-hf");
  std::ifstream in(test::shared_dir() / "text/tinystories_sample.txt");
  std::stringstream ss;
  ss << in.rdbuf();
  CalibrationOptions co;
  co.n_ctx = 256;
  co.max_tokens = 1024;
  co.threads = 2;
  const auto toks = calibration_tokens(src, ss.str(), co);
  const Calibration cal = calibrate(src, toks, co);
  ConvertOptions o;
  o.threads = 2;
  o.quant.bits = 2;
  o.quant.scale_block = 32;
  o.quant.scale_mode = ScaleMode::kAbsMean;
  o.embed_type = "4";
  o.importance = &cal.importance;
  RefineOptions ro;
  ro.threads = 2;
  const auto refined = refine_quantize(src, o, toks, co.n_ctx, ro, {});
  int64_t n_quant = 0;
  for (const auto& t : src.tensors)
    if (t.shape.size() == 2 && choose_tensor(t, o).dtype == DType::kKmq) {
      ++n_quant;
      CHECK_MESSAGE(refined.count(t.name) == 1, t.name);
    }
  CHECK(int64_t(refined.size()) == n_quant);

  // Mean KL(float || quantized) over the first calibration chunk, with every matrix replaced.
  FloatModel fm(src, 2);
  const std::vector<int32_t> chunk(toks.begin(), toks.begin() + co.n_ctx);
  std::vector<float> ref, got;
  fm.run(chunk, nullptr, &ref);
  const int64_t V = src.config.n_vocab;
  auto kl_with = [&](const std::map<std::string, QuantizedTensor>& qs) {
    for (const auto& [name, q] : qs) {
      std::vector<float> v(size_t(q.rows * q.cols));
      for (int64_t r = 0; r < q.rows; ++r) dequantize_row(q, r, v.data() + r * q.cols);
      fm.set_weight(name, v);
    }
    fm.run(chunk, nullptr, &got);
    double kl = 0;
    for (size_t i = 0; i < ref.size(); ++i) kl += std::exp(double(ref[i])) * (double(ref[i]) - double(got[i]));
    return kl / double(ref.size() / size_t(V));
  };
  std::map<std::string, QuantizedTensor> plain;
  for (const auto& t : src.tensors) {
    if (!refined.count(t.name)) continue;
    TensorChoice c = choose_tensor(t, o);
    c.quant.importance = cal.importance.at(t.name).data();
    const auto w = t.load();
    plain.emplace(t.name, quantize(w.data(), t.shape[0], t.shape[1], c.quant));
  }
  const double kl_plain = kl_with(plain), kl_refined = kl_with(refined);
  MESSAGE("KL on the calibration chunk: plain ", kl_plain, ", refined ", kl_refined);
  CHECK(kl_refined < 0.8 * kl_plain);

  o.prequantized = &refined;
  const auto out = test::temp_path("stories-refined.kmq");
  const ConvertReport rep = convert_model(src, out, o);
  int64_t marked = 0;
  for (const auto& t : rep.tensors) marked += t.scheme.find("refined") != std::string::npos;
  CHECK(marked == n_quant);
}

// Calibration and mixed precision on the shared stories260K model (small: seconds):
// importance has one positive entry per input column of every matrix, and --target-bpw
// lands on its target (within one tensor's step) with the embedding counted.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "calib/calibrate.h"
#include "calib/mixed.h"
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

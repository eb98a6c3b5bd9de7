// Mixed precision (kmq-convert --target-bpw): bits per weight matrix chosen by measured
// sensitivity so that the whole file (embedding, output layer, norms included) has a
// target number of bits per weight.
//
// For every matrix t and b in 1..4 the converter's scheme at b bits is fitted and its
// relative (importance-)weighted error e_t(b) = sum imp_j (W - W')^2 / sum imp_j W^2
// measured. With calibration, the tensor's sensitivity a_t is measured once: the mean
// KL-divergence of the float model's next-token distributions on the first sens_tokens
// calibration tokens
// when only t is quantized at 2 bits, divided by e_t(2); the loss of a choice is modelled
// as sum_t a_t e_t(b_t). Without calibration a_t = 1 and imp = 1. Greedy allocation: all
// matrices start at 1 bit; the upgrade with the largest loss reduction per added bit is
// taken while the file stays within the target.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "calib/calibrate.h"
#include "convert/convert.h"

namespace kmq {

struct BitsPlanInputs {
  double target_bpw = 0;
  // Calibration tokens (whole chunks) for the sensitivity measurement; empty: a_t = 1.
  std::vector<int32_t> tokens;
  int64_t n_ctx = 512;
  int64_t sens_tokens = 128;  // tokens of the first chunk the KL is measured on
};

// Returns the choice per matrix (by kmq name). o.importance is used when set. log gets
// one line per tensor (errors, sensitivity, chosen bits) and a summary. Throws kmq::Error
// if the target is below the 1-bit minimum or above the 4-bit maximum.
std::map<std::string, TensorChoice> plan_bits(const SourceModel& src, const ConvertOptions& o,
                                              const BitsPlanInputs& in,
                                              const std::function<void(const std::string&)>& log);

}  // namespace kmq

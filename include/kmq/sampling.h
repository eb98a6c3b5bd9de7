// The sampler: a pure function of the logits, the options and the RNG state.
// Chain order: temperature 0 -> greedy (argmax, lowest id on ties); otherwise
// top-k -> top-p -> min-p on the softmax of logits / temperature, then one draw.
#pragma once
#include <cstdint>
#include <vector>

namespace kmq {

struct SamplerOptions {
  float temperature = 0.8f;  // 0 = greedy
  int top_k = 40;            // 0 = off
  float top_p = 0.95f;       // 1 = off
  float min_p = 0.05f;       // 0 = off
  uint64_t seed = 0;
};

// A small, explicit RNG (xoshiro256**), so a seed gives the same text on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)
 private:
  uint64_t s_[4];
};

int32_t argmax(const float* logits, int64_t n);
int32_t sample(const float* logits, int64_t n, const SamplerOptions& options, Rng& rng);

}  // namespace kmq

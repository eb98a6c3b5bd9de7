// The sampler: a pure function of the logits, the recent tokens, the options and the RNG
// state (the same inputs give the same token on every platform).
//
// Chain order (each step sees the previous step's output):
//   1. penalties on the raw logits, over the last `penalty_last_n` tokens of `history`
//      (each distinct token t seen c(t) times in the window):
//        repetition (CTRL / llama.cpp): logit /= repeat_penalty if logit > 0, else *=;
//        frequency: logit -= c(t) * frequency_penalty;  presence: logit -= presence_penalty.
//   2. temperature <= 0: greedy, the argmax of the penalized logits (lowest id on ties).
//   3. top-k: keep the k largest logits (ties: lowest id first).
//   4. softmax of logits / temperature over the kept candidates.
//   5. top-p: keep the smallest prefix (by descending probability) whose mass >= top_p.
//   6. min-p: keep candidates whose probability >= min_p * the largest probability.
//   7. one draw from the kept candidates, renormalized, with one rng.uniform().
// Exactly one RNG value is consumed per sampled token (none when greedy).
// top-k = 1 is greedy; top-p = 1, min-p = 0, top-k = 0, penalties 1/0/0 are off.
// Logits of -inf are never drawn (unless every candidate is -inf: then the lowest id).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kmq {

struct SamplerOptions {
  float temperature = 0.8f;  // 0 = greedy
  int top_k = 40;            // 0 = off
  float top_p = 0.95f;       // 1 = off
  float min_p = 0.05f;       // 0 = off
  float repeat_penalty = 1.0f;     // 1 = off
  float presence_penalty = 0.0f;   // 0 = off
  float frequency_penalty = 0.0f;  // 0 = off
  int penalty_last_n = 64;         // window of recent tokens the penalties see (0 = off, -1 = all)
  uint64_t seed = 0;
  bool penalties_active() const {
    return penalty_last_n != 0 && (repeat_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f);
  }
};

// Throws kmq::Error naming the option if a value is out of range (negative temperature,
// top-p outside (0, 1], min-p outside [0, 1], repeat penalty <= 0, top-k < 0, ...).
void validate(const SamplerOptions& options);

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

// Step 1 alone: the penalized copy of logits[0..n) (exposed for tests and tools).
std::vector<float> apply_penalties(const float* logits, int64_t n, const SamplerOptions& options,
                                   std::span<const int32_t> history);

// The whole chain. `history`: the tokens so far (prompt and output), oldest first.
int32_t sample(const float* logits, int64_t n, const SamplerOptions& options, Rng& rng,
               std::span<const int32_t> history = {});

// The distribution step 7 draws from (steps 1-6): candidate ids and their renormalized
// probabilities, most probable first. Greedy gives one candidate with probability 1.
std::vector<std::pair<int32_t, double>> sampling_distribution(const float* logits, int64_t n,
                                                              const SamplerOptions& options,
                                                              std::span<const int32_t> history = {});

}  // namespace kmq

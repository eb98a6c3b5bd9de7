// Speed measurement of a loaded model, as `kmq bench` runs it (llama-bench's protocol):
// prompt processing is one eval of p tokens, generation is n evals of one token, both
// from an empty context; tokens are fixed pseudo-random ids (nothing is sampled).
#pragma once
#include <cstdint>
#include <vector>

#include "kmq/kmq_file.h"
#include "kmq/model.h"

namespace kmq {

// Bytes of weights one decoded token reads: every tensor of every layer (norms and biases
// included), output_norm, the output layer (the whole token embedding when tied), and one
// row of the token embedding (its bytes / n_vocab: indices plus its share of codebooks
// and scales).
uint64_t weight_bytes_per_token(const KmqFile& file);

// n token ids: BOS (when the model has one) then ids drawn uniformly from [0, n_vocab)
// by a fixed RNG (the same ids for the same n, config and seed).
std::vector<int32_t> bench_tokens(const ModelConfig& config, int64_t n, uint64_t seed = 1);

// Seconds to evaluate `tokens` in one eval from an empty context (logits of the last
// token copied to the host, which waits for the device). Resets the session first.
double time_prompt(Session& session, const std::vector<int32_t>& tokens);
// Seconds to evaluate tokens one at a time from an empty context, each step's logits
// copied to the host, as generation does. Resets the session first.
double time_generation(Session& session, const std::vector<int32_t>& tokens);

// Batched generation: sessions.size() sequences decoded together (Model::decode_batch),
// each step one token per sequence (all take tokens[i] at step i), from empty contexts.
// Seconds for tokens.size() steps. Resets the sessions first.
double time_batch_generation(Model& model, const std::vector<Session*>& sessions, const std::vector<int32_t>& tokens);

// Mean and sample standard deviation (0 for one value) of n_tokens / seconds[i].
struct SpeedStats {
  double mean = 0, stddev = 0;
};
SpeedStats tokens_per_second(int64_t n_tokens, const std::vector<double>& seconds);

}  // namespace kmq

// The measurements behind `kmq bench` (kmq/bench.h): bytes a token reads, fixed bench
// tokens, timed prompt and generation runs, and their statistics.
#include "kmq/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "kmq/sampling.h"

namespace kmq {

uint64_t weight_bytes_per_token(const KmqFile& file) {
  const ModelConfig& c = file.config();
  uint64_t bytes = 0;
  for (const TensorRef& t : file.tensors()) {
    if (t.name == "token_embd") {
      // One row for the input; the whole table again when it is also the output layer.
      bytes += t.file_size / uint64_t(std::max<int64_t>(1, t.rows));
      if (c.tied_embeddings) bytes += t.file_size;
    } else {
      bytes += t.file_size;  // blk.*, output_norm, output
    }
  }
  return bytes;
}

std::vector<int32_t> bench_tokens(const ModelConfig& config, int64_t n, uint64_t seed) {
  std::vector<int32_t> ids;
  ids.reserve(size_t(std::max<int64_t>(n, 0)));
  Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) {
    if (i == 0 && config.bos_id >= 0)
      ids.push_back(int32_t(config.bos_id));
    else
      ids.push_back(int32_t(rng.next() % uint64_t(config.n_vocab)));
  }
  return ids;
}

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

double time_prompt(Session& session, const std::vector<int32_t>& tokens) {
  session.reset();
  std::vector<float> logits;
  const auto t0 = Clock::now();
  session.eval(tokens, &logits, 1);
  return since(t0);
}

double time_generation(Session& session, const std::vector<int32_t>& tokens) {
  session.reset();
  std::vector<float> logits;
  std::vector<int32_t> one(1);
  const auto t0 = Clock::now();
  for (int32_t id : tokens) {
    one[0] = id;
    session.eval(one, &logits, 1);
  }
  return since(t0);
}

double time_batch_generation(Model& model, const std::vector<Session*>& sessions, const std::vector<int32_t>& tokens) {
  for (Session* s : sessions) s->reset();
  std::vector<float> logits;
  std::vector<int32_t> step(sessions.size());
  const auto t0 = Clock::now();
  for (int32_t id : tokens) {
    std::fill(step.begin(), step.end(), id);
    model.decode_batch(sessions, step, &logits);
  }
  return since(t0);
}

SpeedStats tokens_per_second(int64_t n_tokens, const std::vector<double>& seconds) {
  SpeedStats s;
  if (seconds.empty()) return s;
  std::vector<double> v;
  for (double x : seconds) v.push_back(x > 0 ? double(n_tokens) / x : 0.0);
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.stddev = std::sqrt(ss / double(v.size() - 1));
  }
  return s;
}

}  // namespace kmq

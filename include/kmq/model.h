// Model: a .kmq file loaded onto a backend; Session: one sequence's KV cache and the
// forward pass over new tokens. Everything the tools do is built on these two.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kmq/config.h"
#include "kmq/kmq_file.h"
#include "kmq/tokenizer.h"

namespace kmq {

class Backend;
class Session;

struct ModelOptions {
  std::string device = "cpu";
  int threads = 0;  // 0: all cores
};

class Model {
 public:
  // Opens and validates the file and checks every tensor the architecture needs
  // (names and shapes against the config); throws kmq::Error naming the file.
  static std::unique_ptr<Model> load(const std::filesystem::path& path, const ModelOptions& options = {});
  ~Model();

  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const;
  const KmqFile& file() const;
  Backend& backend();
  std::string backend_name() const;
  uint64_t weight_bytes() const;  // bytes of all tensors (what a token reads, roughly)

  // A new sequence with room for n_ctx tokens (0: the model's max_seq).
  std::unique_ptr<Session> new_session(int64_t n_ctx = 0);

  // One decoding step of several sequences together: tokens[i] is appended to
  // sessions[i] at its own position n_past(); the matmuls run over the stacked rows (each
  // weight read once per step), attention per sequence over its own KV cache.
  // logits: receives sessions.size() x n_vocab values. Sessions must be distinct and of
  // this model; throws kmq::Error if one is full. Same results as Session::eval per
  // sequence (the kernels compute each row independently).
  void decode_batch(const std::vector<Session*>& sessions, const std::vector<int32_t>& tokens,
                    std::vector<float>* logits);

 private:
  Model();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  friend class Session;
};

class Session {
 public:
  ~Session();
  int64_t n_ctx() const;
  int64_t n_past() const;  // tokens already in the cache
  void reset();            // forget all tokens
  void truncate(int64_t n);  // keep the first n tokens (n <= n_past()), forget the rest
  // Evaluates `tokens` at positions n_past().. and appends them to the cache.
  // logits: receives n_out x n_vocab values for the last n_out tokens (n_out <= size).
  // Throws kmq::Error if the tokens do not fit in the context.
  void eval(const std::vector<int32_t>& tokens, std::vector<float>* logits, int64_t n_out = 1);

 private:
  friend class Model;
  Session();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kmq

// Calibration for data-aware quantization: the float model of a SourceModel, run on the
// compute backend over calibration tokens, with hooks on the inputs of every linear layer.
//
// Importance (as llama.cpp's imatrix): for a linear layer y = W x, the mean over the
// calibration tokens of x_j^2 for every input column j. With it, the quantization error of
// a weight matrix weighted by column, sum_r sum_j imp_j (W - W')_rj^2, is the expected
// squared error of the layer's output when the inputs' channels are uncorrelated.
//
// A layer above src/convert (it runs the model): tools -> calib -> backend, convert.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "convert/source.h"

namespace kmq {

struct CalibrationOptions {
  int64_t n_ctx = 512;         // chunk length; each chunk's first token is replaced by BOS
  int64_t max_tokens = 16384;  // at most this many tokens (whole chunks only)
  int threads = 1;
};

struct Calibration {
  // kmq tensor name -> mean x_j^2 of its input over the calibration tokens (length = cols).
  // The tied token_embd gets the output layer's input statistics.
  std::map<std::string, std::vector<float>> importance;
  int64_t tokens = 0, chunks = 0;
};

// The source's tokenizer applied to text (no special tokens), cut to whole chunks of
// n_ctx tokens (at most max_tokens), each chunk's first token replaced by BOS when the
// model has one. Throws kmq::Error if the text is shorter than one chunk.
std::vector<int32_t> calibration_tokens(const SourceModel& src, const std::string& text,
                                        const CalibrationOptions& o);

// A float32 copy of the source model on the CPU backend. Weights can be replaced (by
// dequantized ones) to measure what quantizing them does to the model's outputs.
class FloatModel {
 public:
  FloatModel(const SourceModel& src, int threads);
  ~FloatModel();
  const ModelConfig& config() const;
  // Replaces a weight matrix by `values` (rows*cols floats, copied); empty restores the source.
  void set_weight(const std::string& name, const std::vector<float>& values);
  const std::vector<float>& source_weight(const std::string& name) const;
  // Runs one chunk (tokens.size() <= max_seq) from position 0. If stats is given, adds
  // x_j^2 summed over the chunk's tokens to (*stats)[name][j] for every linear input. If
  // logprobs is given, receives tokens.size() x n_vocab log-softmax values.
  void run(const std::vector<int32_t>& tokens, std::map<std::string, std::vector<double>>* stats,
           std::vector<float>* logprobs);

  // Layer by layer, for sequential quantization. A state holds one chunk's residual stream
  // (positions from 0); begin() embeds a chunk into a new state and returns its number.
  // run_layer() runs layer `layer` on state `st` with the present weights; when `point` is
  // not kNone it appends the [n_tok, width] input of that point's linear layers to
  // *captured (row-major), and when `advance` is false it stops there, leaving the state
  // as it was; when `advance` is true the state becomes the layer's output. final_input()
  // appends the output layer's input (the final norm of the state).
  enum class Point { kNone, kAttnIn, kAttnOutput, kFfnIn, kFfnDown };
  int64_t begin(const std::vector<int32_t>& tokens);
  void run_layer(int64_t st, int64_t layer, Point point, std::vector<float>* captured, bool advance);
  void final_input(int64_t st, std::vector<float>* captured);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs the float model over the tokens (whole chunks of o.n_ctx) and returns the importance
// of every linear layer's input columns.
Calibration calibrate(const SourceModel& src, const std::vector<int32_t>& tokens, const CalibrationOptions& o);

}  // namespace kmq

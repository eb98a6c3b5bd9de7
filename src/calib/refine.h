// Output-aligned refinement (kmq-convert --refine): the transformer's linear layers
// quantized one after another, each fitted to reproduce the float model's outputs on
// calibration text while its inputs come from the model whose earlier layers are already
// quantized (the idea of arXiv 2512.21651; GPTQ's sequential layer-wise scheme).
//
// For a linear layer with float weights W, let X_q be its inputs in the partly quantized
// model and X_f its inputs in the float model (calibration tokens x columns). Its
// quantized weights W' minimise || X_q W'^T - X_f W^T ||^2, i.e. per row
//   (w'_r - t_r)^T H (w'_r - t_r) + const,  H = X_q^T X_q,
//   t_r = (H + lambda I)^-1 (X_q^T X_f w_r + lambda w_r)
// (the ridge lambda = damp * mean(diag H) pulls t towards w where the data says little).
// With `float_target` off, t = W: each layer only adapts to its own quantized inputs
// (plain GPTQ). The minimisation is quantize_hessian() (kmq/quant.h): indices with error
// feedback, block scales and centroids by least squares in the H metric.
//
// Order, per layer: q/k/v (input: the attention norm), then attn_output (input: the
// attention of the quantized q/k/v), then gate/up, then down; the layer's output with all
// of them quantized is the next layer's input. The token embedding is quantized first
// (plain fit, importance of the output layer's input as in convert_model) and is in the
// loop from the start; an untied output layer is refined last on the final norm's output,
// and a tied embedding too where `embed_damp` > 0 (then the blocks were fitted on the
// inputs of its plain fit, and it is fitted as the output layer with a stronger ridge).
#pragma once
#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "kmq/quant.h"

namespace kmq {

struct RefineOptions {
  HessianOptions hessian;
  // Fit the float model's outputs (true) or W on the quantized inputs (false, the default:
  // the float target overfits the calibration text, docs/QUALITY.md).
  bool float_target = false;
  // A tied embedding is also the output layer. > 0: after the blocks, refit it as the
  // output layer on the final norm's outputs of the quantized model, with this relative
  // ridge (larger than the blocks' damping keeps it near the plain fit that its other
  // role, the input embedding, was fitted for); 0: keep the plain fit.
  double embed_damp = 0.0;
  int threads = 1;
  std::atomic<bool>* cancel = nullptr;
};

// Every k-means tensor of the model (as o and o.plan choose them), by kmq name, fitted as
// above on the calibration tokens (whole chunks of n_ctx). log gets one line per matrix
// (relative output error of the plain fit and of the refined one) and the timings.
// Throws kmq::Error on bad input or when cancelled.
std::map<std::string, QuantizedTensor> refine_quantize(const SourceModel& src, const ConvertOptions& o,
                                                       const std::vector<int32_t>& tokens, int64_t n_ctx,
                                                       const RefineOptions& ro,
                                                       const std::function<void(const std::string&)>& log);

}  // namespace kmq

// convert_model(): per-tensor choices, quantization and atomic writing of a .kmq file.
#include "convert/convert.h"

#include <chrono>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <regex>

#include "kmq/error.h"
#include "kmq/kmq_file.h"
#include "util/half.h"

namespace kmq {

namespace {

ScaleMode auto_scale_mode(int bits) { return bits <= 2 ? ScaleMode::kAbsMean : ScaleMode::kAbsMax; }

bool is_matrix(const SourceTensor& t) { return t.shape.size() == 2 && t.shape[1] > 1; }

std::string scheme_of(const TensorChoice& c) {
  if (c.dtype != DType::kKmq) return std::string(dtype_name(c.dtype));
  const auto& q = c.quant;
  std::string s = fmt::format("q{} {}", q.bits, scope_name(q.scope));
  if (q.scope == CodebookScope::kGroup) s += fmt::format("{}", q.group_size);
  if (q.scale_block > 0) s += fmt::format(" sb{} {}", q.scale_block, scale_mode_name(q.scale_mode));
  if (q.importance) s += " imp";
  if (q.ls_iters > 0) s += fmt::format(" ls{}", q.ls_iters);
  return s;
}

}  // namespace

TensorChoice parse_tensor_type(const std::string& type, const QuantSpec& base, bool scale_mode_auto) {
  TensorChoice c;
  if (type == "f32" || type == "f16" || type == "bf16") {
    c.dtype = type == "f32" ? DType::kF32 : type == "f16" ? DType::kF16 : DType::kBF16;
    return c;
  }
  if (type.size() == 1 && type[0] >= '1' && type[0] <= '4') {
    c.dtype = DType::kKmq;
    c.quant = base;
    c.quant.bits = type[0] - '0';
    if (scale_mode_auto && c.quant.scale_block > 0) c.quant.scale_mode = auto_scale_mode(c.quant.bits);
    return c;
  }
  throw Error(fmt::format("unknown tensor type '{}' (expected f32, f16, bf16 or 1..4 bits)", type));
}

TensorChoice choose_tensor(const SourceTensor& t, const ConvertOptions& o) {
  TensorChoice c;
  if (!is_matrix(t)) {  // norms and biases: f32, always
    c.dtype = DType::kF32;
    return c;
  }
  if (o.float_only) {
    c.dtype = o.float_dtype;
  } else {
    c = parse_tensor_type(std::to_string(o.quant.bits), o.quant, o.scale_mode_auto);
    const std::string& special = t.name == "token_embd" ? o.embed_type : t.name == "output" ? o.output_type : "";
    if (special == "auto") {
      c = parse_tensor_type(std::to_string(std::max(o.quant.bits, 4)), o.quant, o.scale_mode_auto);
    } else if (!special.empty()) {
      c = parse_tensor_type(special, o.quant, o.scale_mode_auto);
    }
  }
  for (const auto& [pattern, type] : o.overrides) {
    std::regex re;
    try {
      re = std::regex(pattern);
    } catch (const std::regex_error& e) {
      throw Error(fmt::format("override pattern '{}' is not a valid regular expression: {}", pattern, e.what()));
    }
    if (std::regex_match(t.name, re)) c = parse_tensor_type(type, o.quant, o.scale_mode_auto);
  }
  if (c.dtype == DType::kKmq) {
    const int64_t cols = t.shape[1];
    if (c.quant.scope == CodebookScope::kGroup && c.quant.group_size > cols) c.quant.group_size = cols;
    if (c.quant.scale_block > cols) c.quant.scale_block = cols;
    c.quant.threads = o.threads;
    // Per-row and per-group codebooks are many: f16 halves their cost (docs/FORMAT.md).
    c.quant.codebook_dtype = c.quant.scope == CodebookScope::kTensor ? DType::kF32 : DType::kF16;
  }
  return c;
}

ConvertReport convert_model(const SourceModel& src, const std::filesystem::path& out, const ConvertOptions& o,
                            const ConvertProgress& progress) {
  auto t0 = std::chrono::steady_clock::now();
  ConvertReport rep;
  KmqWriter w(out, src.config, src.tokenizer);
  nlohmann::json notes;
  notes["source"] = src.description;
  notes["converter"] = "kmq-convert";
  nlohmann::json per_tensor = nlohmann::json::object();
  for (size_t i = 0; i < src.tensors.size(); ++i) {
    if (o.cancel && o.cancel->load()) throw Error("conversion cancelled; no output written");
    const SourceTensor& t = src.tensors[i];
    if (t.load_quantized && !o.float_only) {  // already k-means quantized: written as stored
      const QuantizedTensor q = t.load_quantized();
      TensorReport tr;
      tr.name = t.name;
      tr.shape = t.shape;
      tr.scheme = fmt::format("q{} tensor sb{} imported", q.bits, q.scale_block);
      tr.bits_per_weight = q.bits_per_weight();
      const uint64_t n = uint64_t(q.rows * q.cols);
      w.add_quantized(t.name, q);
      tr.bytes = uint64_t(tr.bits_per_weight * double(n) / 8.0 + 0.5);
      rep.n_quant_weights += n;
      rep.quant_bits += tr.bits_per_weight * double(n);
      rep.n_weights += n;
      rep.total_bits += tr.bits_per_weight * double(n);
      per_tensor[t.name] = {{"scheme", tr.scheme}, {"nmse", 0.0}};
      rep.tensors.push_back(tr);
      if (progress) progress(i, src.tensors.size(), tr);
      continue;
    }
    TensorChoice c = choose_tensor(t, o);
    if (o.plan) {
      auto it = o.plan->find(t.name);
      if (it != o.plan->end()) c = it->second;
    }
    if (o.importance && c.dtype == DType::kKmq) {
      auto it = o.importance->find(t.name);
      if (it != o.importance->end()) {
        if (int64_t(it->second.size()) != (t.shape.size() == 2 ? t.shape[1] : 1))
          throw Error(fmt::format("tensor '{}': importance has {} columns, the tensor {}", t.name,
                                  it->second.size(), t.shape.back()));
        c.quant.importance = it->second.data();
      }
    }
    std::vector<float> v = t.load();
    const int64_t rows = t.shape[0], cols = t.shape.size() == 2 ? t.shape[1] : 1;
    if (int64_t(v.size()) != rows * cols)
      throw Error(fmt::format("tensor '{}': loaded {} values, shape needs {}", t.name, v.size(), rows * cols));
    TensorReport tr;
    tr.name = t.name;
    tr.shape = t.shape;
    tr.scheme = scheme_of(c);
    const uint64_t n = uint64_t(rows * cols);
    QuantizedTensor exact;
    if (c.dtype == DType::kKmq && quantize_exact_levels(v.data(), rows, cols, c.quant.bits, &exact)) {
      // A fake-quantized checkpoint (ParetoQ-style levels): stored losslessly.
      tr.scheme = fmt::format("q{} row exact levels ({})", exact.bits, dtype_name(exact.codebook_dtype));
      tr.nmse = 0;
      tr.bits_per_weight = exact.bits_per_weight();
      w.add_quantized(t.name, exact);
      rep.n_quant_weights += n;
      rep.quant_bits += tr.bits_per_weight * double(n);
    } else if (c.dtype == DType::kKmq && o.prequantized && o.prequantized->count(t.name)) {
      const QuantizedTensor& q = o.prequantized->at(t.name);
      if (q.rows != rows || q.cols != cols)
        throw Error(fmt::format("tensor '{}': the refined tensor is {} x {}, the source {} x {}", t.name, q.rows,
                                q.cols, rows, cols));
      tr.scheme += " refined";
      tr.nmse = quant_error(v.data(), q).nmse;
      tr.bits_per_weight = q.bits_per_weight();
      w.add_quantized(t.name, q);
      rep.n_quant_weights += n;
      rep.quant_bits += tr.bits_per_weight * double(n);
    } else if (c.dtype == DType::kKmq) {
      QuantizedTensor q = quantize(v.data(), rows, cols, c.quant);
      tr.nmse = quant_error(v.data(), q).nmse;
      tr.bits_per_weight = q.bits_per_weight();
      w.add_quantized(t.name, q);
      rep.n_quant_weights += n;
      rep.quant_bits += tr.bits_per_weight * double(n);
    } else {
      // exact error of the float rounding
      double err = 0, ref = 0;
      for (float x : v) {
        const float r = c.dtype == DType::kF16 ? round_f16(x) : c.dtype == DType::kBF16 ? round_bf16(x) : x;
        err += double(x - r) * double(x - r);
        ref += double(x) * double(x);
      }
      tr.nmse = ref > 0 ? err / ref : 0;
      tr.bits_per_weight = 8.0 * double(dtype_size(c.dtype));
      w.add_float(t.name, c.dtype, t.shape, v.data());
    }
    tr.bytes = uint64_t(tr.bits_per_weight * double(n) / 8.0 + 0.5);
    rep.n_weights += n;
    rep.total_bits += tr.bits_per_weight * double(n);
    per_tensor[t.name] = {{"scheme", tr.scheme}, {"nmse", tr.nmse}};
    rep.tensors.push_back(tr);
    if (progress) progress(i, src.tensors.size(), tr);
  }
  notes["tensors"] = per_tensor;
  w.set_notes_json(notes.dump());
  if (o.cancel && o.cancel->load()) throw Error("conversion cancelled; no output written");
  w.finish();
  rep.file_bytes = std::filesystem::file_size(out);
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace kmq

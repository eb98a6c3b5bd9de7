// kmq-convert: Hugging Face directories and llama2.c checkpoints to .kmq, fitting k-means
// codebooks. A thin main: options in, convert_model() does the work.
#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <fstream>
#include <cstring>
#include <fmt/format.h>
#include <thread>
#include <unistd.h>

#include "convert/convert.h"
#include "calib/calibrate.h"
#include "calib/mixed.h"
#include "calib/refine.h"
#include "convert/synthetic.h"
#include "kmq/error.h"

namespace {

char g_temp_path[4096];  // the writer's temp file, removed if we are interrupted

void on_signal(int sig) {
  if (g_temp_path[0]) ::unlink(g_temp_path);
  const char msg[] = "\nkmq-convert: interrupted; no output written\n";
  ssize_t ignored = ::write(2, msg, sizeof msg - 1);
  (void)ignored;
  ::_exit(128 + sig);
}

kmq::CodebookScope parse_scope(const std::string& s) {
  if (s == "tensor") return kmq::CodebookScope::kTensor;
  if (s == "row") return kmq::CodebookScope::kRow;
  if (s == "group") return kmq::CodebookScope::kGroup;
  throw kmq::Error("--codebook must be tensor, row or group");
}

// --synthetic PRESET: real shapes, random weights, stored as the options say (synthetic.h).
int run_synthetic(const std::string& preset, const std::string& output, const kmq::ConvertOptions& o, bool quiet) {
  const auto& p = kmq::find_synthetic_preset(preset);
  const auto& c = p.config;
  fmt::print(stderr, "kmq-convert: synthetic {} (random weights, seed {}): {}\n", p.name, o.quant.seed, p.description);
  fmt::print(stderr, "  {} layers, dim {}, {} heads ({} kv), ffn {}, vocab {}, ctx {}{}\n", c.n_layers, c.dim, c.n_heads,
             c.n_kv_heads, c.ffn_dim, c.n_vocab, c.max_seq, c.tied_embeddings ? ", tied embeddings" : "");
  std::string tmp = output + fmt::format(".tmp-{}", ::getpid());
  std::strncpy(g_temp_path, tmp.c_str(), sizeof g_temp_path - 1);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  kmq::SyntheticOptions so;
  so.preset = preset;
  so.seed = o.quant.seed;
  auto rep = kmq::write_synthetic_model(so, output, o, [&](size_t i, size_t n, const kmq::TensorReport& t) {
    if (quiet) return;
    std::string shape = t.shape.size() == 2 ? fmt::format("{}x{}", t.shape[0], t.shape[1]) : fmt::format("{}", t.shape[0]);
    fmt::print(stderr, "  [{:>4}/{}] {:<24} {:>12}  {:<26} {:6.3f} bpw\n", i + 1, n, t.name, shape, t.scheme,
               t.bits_per_weight);
  });
  g_temp_path[0] = 0;
  fmt::print(stderr, "kmq-convert: wrote {} ({:.2f} MB) in {:.1f} s\n", output, rep.file_bytes / 1e6, rep.seconds);
  if (rep.n_quant_weights)
    fmt::print(stderr, "  quantized tensors: {:.4f} bits/weight over {} weights\n",
               rep.quant_bits / double(rep.n_quant_weights), rep.n_quant_weights);
  fmt::print(stderr, "  all tensors: {:.4f} bits/weight over {} weights\n", rep.total_bits / double(rep.n_weights),
             rep.n_weights);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "kmq-convert: convert a checkpoint to a .kmq model, quantizing linear layers with k-means.\n\n"
      "Inputs: a Hugging Face model directory (config.json, *.safetensors, tokenizer.json or\n"
      "tokenizer.model), or a llama2.c checkpoint file (with --tokenizer tokenizer.bin).\n\n"
      "Examples:\n"
      "  kmq-convert ~/models/SmolLM-135M -o smollm-q4.kmq                 # 4.25 bits/weight\n"
      "  kmq-convert ~/models/SmolLM-135M -o smollm-q2.kmq --bits 2 --codebook row\n"
      "  kmq-convert ~/models/SmolLM-135M -o smollm-bf16.kmq --float bf16  # no quantization\n"
      "  kmq-convert stories260K.bin --tokenizer tok512.bin -o stories.kmq --float f32\n"
      "  kmq-convert --synthetic llama-3.2-1b -o synth-1b-q2.kmq --bits 2  # random weights, real shapes\n",
      "kmq-convert"};
  app.set_version_flag("--version", "kmq-convert 0.1.0 (writes .kmq format version 1)");
  std::string input, output, tokenizer, codebook = "tensor", scale_mode = "auto", float_type;
  std::vector<std::string> overrides;
  kmq::ConvertOptions o;
  int threads = 0;
  bool force = false, quiet = false;
  app.add_option("input", input, "Hugging Face directory or llama2.c checkpoint (none with --synthetic)");
  app.add_option("-o,--output", output, "Output .kmq file (written atomically)")->required();
  app.add_option("--tokenizer", tokenizer, "llama2.c tokenizer.bin (llama2.c inputs only)");
  app.add_option("--bits", o.quant.bits, "Bits per index: 1, 2, 3 or 4")->check(CLI::Range(1, 4))->capture_default_str();
  app.add_option("--codebook", codebook, "Codebook scope: tensor | row | group")->capture_default_str();
  app.add_option("--group-size", o.quant.group_size, "Weights per codebook with --codebook group")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20))->capture_default_str();
  app.add_option("--scale-block", o.quant.scale_block, "Weights per scale along a row (0: no scales)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20))->capture_default_str();
  app.add_option("--scale-mode", scale_mode, "auto (absmean at 1-2 bits, absmax above) | absmax | absmean")
      ->capture_default_str();
  app.add_option("--float", float_type, "No quantization: store every tensor as f16, bf16 or f32");
  app.add_option("--embed-type", o.embed_type,
                 "token_embd: auto (max(bits,4)), f32, f16, bf16 or 1..4")->capture_default_str();
  app.add_option("--output-type", o.output_type, "output layer: as --embed-type")->capture_default_str();
  app.add_option("--override", overrides,
                 "REGEX=TYPE: tensors whose kmq name matches REGEX get TYPE (f32|f16|bf16|1..4);\n"
                 "e.g. --override 'blk\\.0\\..*=4' (names: kmq info FILE)");
  app.add_option("-t,--threads", threads, "Threads (default: all cores)");
  app.add_option("--seed", o.quant.seed, "k-means++ seed (output is deterministic for a seed)");
  // Data-aware quantization (issue #6): importance from calibration text, least-squares
  // refit of scales and centroids, mixed precision by measured sensitivity.
  std::string calibration;
  kmq::CalibrationOptions cal_opts;
  double target_bpw = 0;
  app.add_option("--calibration", calibration,
                 "Text file: run the float model over it and weight each weight's error by its input\n"
                 "channel's activation energy (mean x^2, like llama.cpp's imatrix)");
  app.add_option("--calibration-tokens", cal_opts.max_tokens, "Calibration tokens (whole chunks of 512)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 24))->capture_default_str();
  app.add_option("--ls-iters", o.quant.ls_iters,
                 "Least-squares passes refitting block scales and centroids to the (importance-)\n"
                 "weighted error after k-means (0: none)")->check(CLI::Range(0, 100))->capture_default_str();
  app.add_option("--target-bpw", target_bpw,
                 "Mixed precision: choose 1..4 bits per matrix (embedding and output included) by\n"
                 "measured sensitivity (KL with one tensor at 2 bits, with --calibration) times\n"
                 "weighted error, per byte, so the whole file has at most this many bits/weight")
      ->check(CLI::Range(1.0, 16.0));
  bool refine = false;
  kmq::RefineOptions refine_opts;
  std::string refine_target = "quant";
  app.add_flag("--refine", refine,
               "Output-aligned refinement (needs --calibration): quantize the layers in order, each\n"
               "fitted to the float model's outputs on the calibration text with the earlier layers\n"
               "already quantized (GPTQ-style error feedback, then least-squares scales and centroids)");
  app.add_option("--refine-rounds", refine_opts.hessian.rounds, "Refinement rounds (assignment + refits) per matrix")
      ->check(CLI::Range(1, 20))->capture_default_str();
  app.add_option("--refine-damp", refine_opts.hessian.damp,
                 "Relative ridge added to the inputs' second-moment matrix (GPTQ's damping)")
      ->check(CLI::Range(0.0, 10.0))->capture_default_str();
  app.add_option("--refine-embed-damp", refine_opts.embed_damp,
                 "A tied embedding (also the output layer): > 0 refits it after the blocks as the output\n"
                 "layer, with this relative ridge (it stays near the plain fit its input role wants);\n"
                 "0: the plain fit")
      ->check(CLI::Range(0.0, 100.0))->capture_default_str();
  app.add_option("--refine-target", refine_target,
                 "quant: fit W on the quantized inputs (GPTQ; the better one on held-out text);\n"
                 "float: fit the float model's outputs (corrects earlier layers' error, overfits)")
      ->check(CLI::IsMember({"float", "quant"}))->capture_default_str();
  app.add_flag("-f,--force", force, "Overwrite an existing output file");
  app.add_flag("-q,--quiet", quiet, "No per-tensor progress");
  std::string synthetic, presets;
  for (const auto& p : kmq::synthetic_presets()) presets += fmt::format("\n  {}: {}", p.name, p.description);
  app.add_option("--synthetic", synthetic,
                 "No input: write PRESET's shapes with random weights (from --seed), stored as the other\n"
                 "options say; for speed measurements. Presets (context 8192, tiny: 512):" + presets);
  CLI11_PARSE(app, argc, argv);

  try {
    if (std::filesystem::exists(output) && !force)
      throw kmq::Error(fmt::format("{}: already exists (use --force to overwrite)", output));
    o.quant.scope = parse_scope(codebook);
    o.scale_mode_auto = scale_mode == "auto";
    if (scale_mode == "absmax") o.quant.scale_mode = kmq::ScaleMode::kAbsMax;
    else if (scale_mode == "absmean") o.quant.scale_mode = kmq::ScaleMode::kAbsMean;
    else if (scale_mode != "auto") throw kmq::Error("--scale-mode must be auto, absmax or absmean");
    if (o.quant.scale_block == 0) o.quant.scale_mode = kmq::ScaleMode::kNone;
    if (!float_type.empty()) {
      o.float_only = true;
      o.float_dtype = kmq::parse_tensor_type(float_type, o.quant, false).dtype;
      if (o.float_dtype == kmq::DType::kKmq) throw kmq::Error("--float takes f16, bf16 or f32");
    }
    for (const auto& ov : overrides) {
      auto eq = ov.rfind('=');
      if (eq == std::string::npos || eq == 0) throw kmq::Error(fmt::format("--override '{}': expected REGEX=TYPE", ov));
      o.overrides.emplace_back(ov.substr(0, eq), ov.substr(eq + 1));
    }
    o.threads = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));

    if (!synthetic.empty() && !input.empty())
      throw kmq::Error(fmt::format("give an input or --synthetic, not both ('{}' and --synthetic {})", input, synthetic));
    if (!synthetic.empty()) return run_synthetic(synthetic, output, o, quiet);
    if (input.empty()) throw kmq::Error("no input: give a checkpoint (directory or file), or --synthetic PRESET");
    kmq::SourceModel src;
    if (std::filesystem::is_directory(input)) {
      src = kmq::open_hf_dir(input);
    } else if (std::filesystem::exists(input)) {
      std::filesystem::path tok = tokenizer;
      if (tok.empty()) tok = std::filesystem::path(input).parent_path() / "tokenizer.bin";
      if (!std::filesystem::exists(tok))
        throw kmq::Error(fmt::format("{}: a llama2.c checkpoint needs its tokenizer: --tokenizer tokenizer.bin", input));
      src = kmq::open_llama2c(input, tok);
    } else {
      throw kmq::Error(fmt::format("{}: no such file or directory", input));
    }
    const auto& c = src.config;
    fmt::print(stderr, "kmq-convert: {}: {}\n", input, src.description);
    fmt::print(stderr, "  {} layers, dim {}, {} heads ({} kv), ffn {}, vocab {}, ctx {}{}\n", c.n_layers, c.dim,
               c.n_heads, c.n_kv_heads, c.ffn_dim, c.n_vocab, c.max_seq, c.tied_embeddings ? ", tied embeddings" : "");

    kmq::Calibration cal;
    std::vector<int32_t> cal_tokens;
    if (!calibration.empty()) {
      std::ifstream in(calibration, std::ios::binary);
      if (!in) throw kmq::Error(fmt::format("{}: cannot read the calibration text", calibration));
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      cal_opts.threads = o.threads;
      cal_tokens = kmq::calibration_tokens(src, text, cal_opts);
      const auto& toks = cal_tokens;
      const auto t0 = std::chrono::steady_clock::now();
      cal = kmq::calibrate(src, toks, cal_opts);
      fmt::print(stderr, "  calibration: {} tokens ({} chunks of {}) from {} in {:.1f} s\n", cal.tokens, cal.chunks,
                 cal_opts.n_ctx, calibration,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      o.importance = &cal.importance;
    }
    std::map<std::string, kmq::TensorChoice> plan;
    if (target_bpw > 0) {
      if (o.float_only) throw kmq::Error("--target-bpw and --float exclude each other");
      kmq::BitsPlanInputs pin;
      pin.target_bpw = target_bpw;
      pin.tokens = cal_tokens;
      pin.n_ctx = cal_opts.n_ctx;
      plan = kmq::plan_bits(src, o, pin, [&](const std::string& line) { fmt::print(stderr, "{}\n", line); });
      o.plan = &plan;
    }
    std::map<std::string, kmq::QuantizedTensor> refined;
    if (refine) {
      if (calibration.empty()) throw kmq::Error("--refine needs --calibration TEXT");
      if (o.float_only) throw kmq::Error("--refine and --float exclude each other");
      refine_opts.float_target = refine_target == "float";
      refine_opts.threads = o.threads;
      refined = kmq::refine_quantize(src, o, cal_tokens, cal_opts.n_ctx, refine_opts,
                                     [&](const std::string& line) { if (!quiet) fmt::print(stderr, "{}\n", line); });
      o.prequantized = &refined;
    }
    {
      // The writer names its temp file after the output and our pid.
      std::string tmp = output + fmt::format(".tmp-{}", ::getpid());
      std::strncpy(g_temp_path, tmp.c_str(), sizeof g_temp_path - 1);
      struct sigaction sa {};
      sa.sa_handler = on_signal;
      sigaction(SIGINT, &sa, nullptr);
      sigaction(SIGTERM, &sa, nullptr);
    }
    auto rep = kmq::convert_model(src, output, o, [&](size_t i, size_t n, const kmq::TensorReport& t) {
      if (quiet) return;
      std::string shape = t.shape.size() == 2 ? fmt::format("{}x{}", t.shape[0], t.shape[1]) : fmt::format("{}", t.shape[0]);
      fmt::print(stderr, "  [{:>4}/{}] {:<24} {:>12}  {:<26} {:6.3f} bpw  nmse {:.2e}\n", i + 1, n, t.name, shape,
                 t.scheme, t.bits_per_weight, t.nmse);
    });
    g_temp_path[0] = 0;
    const double qbpw = rep.n_quant_weights ? rep.quant_bits / double(rep.n_quant_weights) : 0;
    fmt::print(stderr, "kmq-convert: wrote {} ({:.2f} MB) in {:.1f} s\n", output, rep.file_bytes / 1e6, rep.seconds);
    if (rep.n_quant_weights)
      fmt::print(stderr, "  quantized tensors: {:.4f} bits/weight over {} weights\n", qbpw, rep.n_quant_weights);
    fmt::print(stderr, "  all tensors: {:.4f} bits/weight over {} weights\n",
               rep.total_bits / double(rep.n_weights), rep.n_weights);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "kmq-convert: error: {}\n", e.what());
    return 1;
  }
}

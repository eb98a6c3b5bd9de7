// kmq-convert: Hugging Face directories and llama2.c checkpoints to .kmq, fitting k-means
// codebooks. A thin main: options in, convert_model() does the work.
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstring>
#include <fmt/format.h>
#include <thread>
#include <unistd.h>

#include "convert/convert.h"
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
      "  kmq-convert stories260K.bin --tokenizer tok512.bin -o stories.kmq --float f32\n",
      "kmq-convert"};
  app.set_version_flag("--version", "kmq-convert 0.1.0 (writes .kmq format version 1)");
  std::string input, output, tokenizer, codebook = "tensor", scale_mode = "auto", float_type;
  std::vector<std::string> overrides;
  kmq::ConvertOptions o;
  int threads = 0;
  bool force = false, quiet = false;
  app.add_option("input", input, "Hugging Face directory or llama2.c checkpoint")->required();
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
  app.add_flag("-f,--force", force, "Overwrite an existing output file");
  app.add_flag("-q,--quiet", quiet, "No per-tensor progress");
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

// kmq info: configuration, tokenizer, every tensor with its scheme, true bits per weight;
// --verify checks every tensor's checksum; --json for machines.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "kmq/kmq_file.h"

namespace kmq::tools {

Runner add_info(CLI::App& app) {
  struct Opts {
    std::string path;
    bool verify = false, json = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("model", o->path, "The .kmq file")->required();
  app.add_flag("--verify", o->verify, "Check every tensor's checksum (exit 1 if any is corrupted)");
  app.add_flag("--json", o->json, "Print JSON instead of text");
  return [o]() -> int {
    KmqFile f(o->path);
    const auto& c = f.config();
    const auto& tk = f.tokenizer();
    uint64_t n_all = 0, n_q = 0;
    double bits_all = 0, bits_q = 0;
    nlohmann::json jt = nlohmann::json::array();
    for (const auto& t : f.tensors()) {
      const double n = double(t.numel());
      const double bits = t.dtype == DType::kKmq ? 8.0 * double(t.file_size) : n * 8.0 * double(dtype_size(t.dtype));
      n_all += uint64_t(n);
      bits_all += bits;
      if (t.dtype == DType::kKmq) {
        n_q += uint64_t(n);
        bits_q += bits;
      }
      std::string scheme(dtype_name(t.dtype));
      if (t.dtype == DType::kKmq) {
        scheme = fmt::format("q{} {}", t.bits, scope_name(t.scope));
        if (t.scope == CodebookScope::kGroup) scheme += std::to_string(t.group_size);
        scheme += fmt::format(" cb:{}", dtype_name(t.codebook_dtype));
        if (t.scale_block) scheme += fmt::format(" sb{}:{}", t.scale_block, dtype_name(t.scale_dtype));
      }
      jt.push_back({{"name", t.name}, {"shape", t.ndim == 1 ? nlohmann::json{t.rows} : nlohmann::json{t.rows, t.cols}},
                    {"scheme", scheme}, {"bits_per_weight", bits / n}, {"bytes", t.file_size}});
    }
    std::vector<std::string> bad;
    if (o->verify) bad = f.verify();
    if (o->json) {
      nlohmann::json j = nlohmann::json::parse(f.metadata_json());
      j.erase("tokenizer");
      j["file"] = f.path();
      j["version"] = f.version();
      j["file_size"] = f.file_size();
      j["tokenizer"] = {{"kind", tk.kind == TokenizerKind::kSpm ? "spm" : "bpe"}, {"n_tokens", tk.tokens.size()},
                        {"bos_id", tk.bos_id}, {"eos_id", tk.eos_id}, {"add_bos", tk.add_bos},
                        {"pre_tokenizer", tk.pre_tokenizer}, {"has_chat_template", !tk.chat_template.empty()}};
      j["tensors"] = jt;
      j["bits_per_weight"] = {{"quantized", n_q ? bits_q / double(n_q) : 0.0}, {"all", bits_all / double(n_all)}};
      if (o->verify) j["verify"] = {{"ok", bad.empty()}, {"corrupted", bad}};
      fmt::print("{}\n", j.dump(2));
    } else {
      fmt::print("file:        {} ({:.2f} MB, format version {})\n", f.path(), f.file_size() / 1e6, f.version());
      fmt::print("model:       {} ({})\n", c.name.empty() ? "(unnamed)" : c.name, c.arch);
      fmt::print("shape:       {} layers, dim {}, {} heads / {} kv heads, head_dim {}, ffn {}, vocab {}\n", c.n_layers,
                 c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.n_vocab);
      fmt::print("context:     {} tokens; RoPE theta {}{}; norm eps {}\n", c.max_seq, c.rope_theta,
                 c.rope_scaling.type == "none" ? "" : fmt::format(", {} scaling x{}", c.rope_scaling.type, c.rope_scaling.factor),
                 c.norm_eps);
      fmt::print("embeddings:  {}{}\n", c.tied_embeddings ? "tied to the output layer" : "separate output layer",
                 c.attn_qkv_bias ? "; q/k/v biases" : "");
      fmt::print("tokenizer:   {} ({} tokens{}), bos {} eos {}, add_bos {}{}\n",
                 tk.kind == TokenizerKind::kSpm ? "SentencePiece BPE" : "byte-level BPE", tk.tokens.size(),
                 tk.pre_tokenizer.empty() ? "" : ", pre-tokenizer " + tk.pre_tokenizer, tk.bos_id, tk.eos_id, tk.add_bos,
                 tk.chat_template.empty() ? "" : "; chat template");
      fmt::print("\n{:<28} {:>14}  {:<32} {:>8} {:>12}\n", "tensor", "shape", "scheme", "bpw", "bytes");
      for (const auto& t : jt) {
        const auto& s = t["shape"];
        std::string shape = s.size() == 1 ? fmt::format("{}", s[0].get<int64_t>())
                                          : fmt::format("{}x{}", s[0].get<int64_t>(), s[1].get<int64_t>());
        fmt::print("{:<28} {:>14}  {:<32} {:>8.4f} {:>12}\n", t["name"].get<std::string>(), shape,
                   t["scheme"].get<std::string>(), t["bits_per_weight"].get<double>(), t["bytes"].get<uint64_t>());
      }
      fmt::print("\nbits per weight: quantized tensors {:.4f} ({} weights), whole model {:.4f} ({} weights)\n",
                 n_q ? bits_q / double(n_q) : 0.0, n_q, bits_all / double(n_all), n_all);
      if (o->verify) {
        if (bad.empty()) fmt::print("verify: all {} tensors intact\n", f.tensors().size());
        for (const auto& b : bad) fmt::print("verify: tensor '{}' is CORRUPTED (checksum mismatch)\n", b);
      }
    }
    if (!bad.empty()) {
      fmt::print(stderr, "kmq: error: {}: {} corrupted tensor(s)\n", f.path(), bad.size());
      return 1;
    }
    return 0;
  };
}

}  // namespace kmq::tools

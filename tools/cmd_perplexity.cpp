// kmq perplexity: PPL ± standard error of a text by the llama.cpp protocol or sliding
// windows, with progress; --save-logits / --kl-divergence compare two models.
#include <chrono>
#include <filesystem>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "commands.h"
#include "kmq/error.h"
#include "kmq/runtime.h"

namespace kmq::tools {

Runner add_perplexity(CLI::App& app) {
  struct Opts {
    std::string model, file, device = "cpu";
    std::string save_logits, kl_divergence;
    int64_t ctx = 512, chunks = 0, stride = 0;
    int threads = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("-m,--model", o->model, "The .kmq model")->required();
  app.add_option("-f,--file", o->file, "Text file (e.g. wiki.test.raw)")->required();
  app.add_option("-c,--ctx", o->ctx, "Tokens per chunk")->capture_default_str();
  app.add_option("--chunks", o->chunks, "Score only the first N chunks or windows (0 = all)")->capture_default_str();
  app.add_option("--stride", o->stride,
                 "Sliding windows of --ctx tokens advancing by S, each token scored once (0: llama.cpp chunks)")
      ->capture_default_str();
  app.add_option("--save-logits", o->save_logits,
                 "Save the f32 log-probs of every scored position to FILE (4 x n_vocab bytes per token)");
  app.add_option("--kl-divergence", o->kl_divergence,
                 "Compare with log-probs saved by --save-logits: KL-divergence, PPL ratio, top-1 agreement, Δp");
  app.add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  app.add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  app.add_flag("--json", o->json, "Print the result as JSON");
  return [o]() -> int {
    const std::string text = read_input_text(o->file);
    auto model = Model::load(o->model, ModelOptions{o->device, o->threads});
    auto tokens = model->tokenizer().encode(text, false, true);  // no BOS: each chunk gets one
    fmt::print(stderr, "kmq: {} on {}; {} tokens, chunks of {}\n", o->model, model->backend_name(), tokens.size(), o->ctx);
    const bool tty = ::isatty(2);
    PerplexityOptions po;
    po.n_ctx = o->ctx;
    po.stride = o->stride;
    po.max_chunks = o->chunks;
    po.save_logprobs = o->save_logits;
    po.kl_reference = o->kl_divergence;
    const PerplexityPlan plan = perplexity_plan(int64_t(tokens.size()), po);
    if (!o->save_logits.empty()) {
      const double bytes = 4.0 * double(plan.tokens_scored) * double(model->config().n_vocab);
      const auto dir = std::filesystem::absolute(o->save_logits).parent_path();
      std::error_code ec;
      const auto space = std::filesystem::space(dir, ec);
      if (!ec && double(space.available) < bytes * 1.01)
        throw Error(fmt::format("{}: the log-probs of {} tokens take {:.2f} GB but only {:.2f} GB are free there "
                                "(use --chunks or a smaller text)", o->save_logits, plan.tokens_scored, bytes / 1e9,
                                double(space.available) / 1e9));
      fmt::print(stderr, "kmq: saving f32 log-probs of {} tokens x {} to {}: {:.2f} GB{}\n", plan.tokens_scored,
                 model->config().n_vocab, o->save_logits, bytes / 1e9,
                 bytes > 1e9 ? " (large: --chunks N limits it)" : "");
    }
    auto t0 = std::chrono::steady_clock::now();
    po.progress = [&](int64_t done, int64_t total, double ppl) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tps = double(done * o->ctx) / secs;  // tokens evaluated per second
      const double eta = secs / double(done) * double(total - done);
      if (tty)
        fmt::print(stderr, "\r  chunk {}/{}  ppl {:.4f}  {:.0f} tok/s  eta {:.0f} s   ", done, total, ppl, tps, eta);
      else if (done == total || done % 16 == 0)
        fmt::print(stderr, "  chunk {}/{}  ppl {:.4f}  {:.0f} tok/s\n", done, total, ppl, tps);
    };
    auto r = perplexity(*model, tokens, po);
    if (tty) fmt::print(stderr, "\n");
    const auto& k = r.kl;
    if (o->json) {
      nlohmann::json j = {{"model", o->model},        {"file", o->file},         {"n_ctx", r.n_ctx},
                          {"stride", r.stride},
                          {"chunks", r.chunks},       {"tokens_scored", r.tokens_scored},
                          {"text_tokens", r.text_tokens}, {"mean_nll", r.mean_nll}, {"nll_stderr", r.nll_stderr},
                          {"ppl", r.ppl},             {"ppl_stderr", r.ppl_stderr}, {"seconds", r.seconds},
                          {"tokens_per_second", r.seconds > 0 ? double(r.chunks * r.n_ctx) / r.seconds : 0.0}};
      if (r.has_kl) {
        auto pct = [](const std::vector<std::pair<double, double>>& v) {
          nlohmann::json a = nlohmann::json::object();
          for (auto [p, x] : v) a[fmt::format("{:g}", p)] = x;
          return a;
        };
        j["kl_divergence"] = {{"reference", o->kl_divergence}, {"tokens", k.tokens},
                              {"kld_mean", k.kld_mean}, {"kld_stderr", k.kld_stderr},
                              {"kld_percentiles", pct(k.kld_percentiles)},
                              {"ref_ppl", k.ref_ppl}, {"ref_ppl_stderr", k.ref_ppl_stderr},
                              {"ppl_ratio", k.ppl_ratio}, {"ln_ppl_ratio", k.ln_ppl_ratio},
                              {"ln_ppl_ratio_stderr", k.ln_ppl_ratio_stderr},
                              {"top1_agreement", k.top1_agree}, {"top1_agreement_stderr", k.top1_agree_stderr},
                              {"dp_mean", k.dp_mean}, {"dp_stderr", k.dp_stderr}, {"dp_rms", k.dp_rms},
                              {"dp_percentiles", pct(k.dp_percentiles)}};
      }
      fmt::print("{}\n", j.dump(2));
    } else {
      const std::string what = r.stride ? fmt::format("{} windows of {} by {}", r.chunks, r.n_ctx, r.stride)
                                        : fmt::format("{} chunks of {}", r.chunks, r.n_ctx);
      fmt::print("perplexity: {:.4f} ± {:.4f}  (mean NLL {:.6f} ± {:.6f}; {}, {} tokens scored; {:.1f} s)\n",
                 r.ppl, r.ppl_stderr, r.mean_nll, r.nll_stderr, what, r.tokens_scored, r.seconds);
      if (r.has_kl) {
        fmt::print("KL-divergence against {} ({} tokens):\n", o->kl_divergence, k.tokens);
        fmt::print("  PPL(ref)            {:.4f} ± {:.4f}\n", k.ref_ppl, k.ref_ppl_stderr);
        fmt::print("  PPL ratio           {:.6f}  (ln ratio {:.6f} ± {:.6f})\n", k.ppl_ratio, k.ln_ppl_ratio,
                   k.ln_ppl_ratio_stderr);
        fmt::print("  mean KLD            {:.6f} ± {:.6f}\n", k.kld_mean, k.kld_stderr);
        for (auto [p, x] : k.kld_percentiles)
          fmt::print("  KLD {:<16}{:.6f}\n", p == 0 ? "min" : p == 100 ? "max" : fmt::format("{:g}%", p), x);
        fmt::print("  same top-1          {:.3f} ± {:.3f} %\n", 100 * k.top1_agree, 100 * k.top1_agree_stderr);
        fmt::print("  mean Δp             {:.4f} ± {:.4f} %\n", 100 * k.dp_mean, 100 * k.dp_stderr);
        fmt::print("  RMS Δp              {:.4f} %\n", 100 * k.dp_rms);
        for (auto [p, x] : k.dp_percentiles)
          fmt::print("  Δp {:<17}{:.4f} %\n", p == 0 ? "min" : p == 100 ? "max" : fmt::format("{:g}%", p), 100 * x);
      }
    }
    return 0;
  };
}

}  // namespace kmq::tools

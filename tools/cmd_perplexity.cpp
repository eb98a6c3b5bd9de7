// kmq perplexity: PPL ± standard error of a text by the llama.cpp protocol, with progress.
#include <chrono>
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
    int64_t ctx = 512, chunks = 0;
    int threads = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("-m,--model", o->model, "The .kmq model")->required();
  app.add_option("-f,--file", o->file, "Text file (e.g. wiki.test.raw)")->required();
  app.add_option("-c,--ctx", o->ctx, "Tokens per chunk")->capture_default_str();
  app.add_option("--chunks", o->chunks, "Score only the first N chunks (0 = all)")->capture_default_str();
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
    po.max_chunks = o->chunks;
    auto t0 = std::chrono::steady_clock::now();
    po.progress = [&](int64_t done, int64_t total, double ppl) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tps = double(done * o->ctx) / secs;
      const double eta = secs / double(done) * double(total - done);
      if (tty)
        fmt::print(stderr, "\r  chunk {}/{}  ppl {:.4f}  {:.0f} tok/s  eta {:.0f} s   ", done, total, ppl, tps, eta);
      else if (done == total || done % 16 == 0)
        fmt::print(stderr, "  chunk {}/{}  ppl {:.4f}  {:.0f} tok/s\n", done, total, ppl, tps);
    };
    auto r = perplexity(*model, tokens, po);
    if (tty) fmt::print(stderr, "\n");
    if (o->json) {
      nlohmann::json j = {{"model", o->model},        {"file", o->file},         {"n_ctx", r.n_ctx},
                          {"chunks", r.chunks},       {"tokens_scored", r.tokens_scored},
                          {"text_tokens", r.text_tokens}, {"mean_nll", r.mean_nll}, {"nll_stderr", r.nll_stderr},
                          {"ppl", r.ppl},             {"ppl_stderr", r.ppl_stderr}, {"seconds", r.seconds}};
      fmt::print("{}\n", j.dump(2));
    } else {
      fmt::print("perplexity: {:.4f} ± {:.4f}  (mean NLL {:.6f} ± {:.6f}; {} chunks of {}, {} tokens scored; {:.1f} s)\n",
                 r.ppl, r.ppl_stderr, r.mean_nll, r.nll_stderr, r.chunks, r.n_ctx, r.tokens_scored, r.seconds);
    }
    return 0;
  };
}

}  // namespace kmq::tools

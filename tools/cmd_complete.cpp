// kmq complete: one prompt in, its completion streamed to stdout (logs on stderr);
// --json prints ids, text and optionally the top logits of the last prompt position.
#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "kmq/error.h"
#include "kmq/runtime.h"

namespace kmq::tools {

Runner add_complete(CLI::App& app) {
  struct Opts {
    std::string model, prompt, file, device = "cpu";
    int64_t n = 128, ctx = 0, top_logits = 0;
    int threads = 0;
    SamplerOptions s;
    bool json = false, no_bos = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("-m,--model", o->model, "The .kmq model")->required();
  app.add_option("-p,--prompt", o->prompt, "Prompt text");
  app.add_option("-f,--file", o->file, "Read the prompt from a file ('-' = stdin)");
  app.add_option("-n,--n-predict", o->n, "Tokens to generate at most")->capture_default_str();
  app.add_option("--temp", o->s.temperature, "Temperature (0 = greedy)")->capture_default_str();
  app.add_option("--top-k", o->s.top_k, "Top-k (0 = off)")->capture_default_str();
  app.add_option("--top-p", o->s.top_p, "Top-p (1 = off)")->capture_default_str();
  app.add_option("--min-p", o->s.min_p, "Min-p (0 = off)")->capture_default_str();
  app.add_option("--seed", o->s.seed, "Random seed")->capture_default_str();
  app.add_option("-c,--ctx", o->ctx, "Context size (default: the model's)");
  app.add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  app.add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  app.add_flag("--json", o->json, "Print one JSON object: prompt ids, completion ids and text");
  app.add_option("--top-logits", o->top_logits, "With --json: the top K logits of the last prompt position");
  app.add_flag("--no-bos", o->no_bos, "Do not add BOS/EOS tokens to the prompt");
  return [o]() -> int {
    if (!o->prompt.empty() && !o->file.empty()) throw Error("give the prompt with -p or -f, not both");
    std::string prompt = o->prompt;
    if (!o->file.empty()) prompt = read_input_text(o->file);
    if (prompt.empty()) throw Error("no prompt: use -p TEXT or -f FILE");
    auto model = Model::load(o->model, ModelOptions{o->device, o->threads});
    const auto& tok = model->tokenizer();
    auto ids = tok.encode(prompt, !o->no_bos, true);  // special-token text is parsed, as transformers does
    const int64_t n_ctx = o->ctx > 0 ? o->ctx : model->config().max_seq;
    if (int64_t(ids.size()) >= n_ctx)
      throw Error(fmt::format("{}: the prompt has {} tokens, which does not fit the context of {} tokens "
                              "(shorten it, or raise --ctx up to {})", o->model, ids.size(), n_ctx, model->config().max_seq));
    auto session = model->new_session(n_ctx);
    fmt::print(stderr, "kmq: {} on {}; prompt {} tokens\n", o->model, model->backend_name(), ids.size());
    GenerateOptions go;
    go.max_tokens = o->n;
    go.sampler = o->s;
    go.top_logits = o->json ? o->top_logits : 0;
    std::string pending;
    auto r = generate(*session, *model, ids, go, [&](int32_t id) {
      if (o->json) return true;
      pending += tok.decode_token(id);
      const size_t k = complete_utf8_prefix(pending);
      std::fwrite(pending.data(), 1, k, stdout);
      std::fflush(stdout);
      pending.erase(0, k);
      return true;
    });
    if (!o->json) {
      std::fwrite(pending.data(), 1, pending.size(), stdout);
      std::fputc('\n', stdout);
    } else {
      nlohmann::json j;
      j["prompt"] = prompt;
      j["prompt_ids"] = r.prompt_ids;
      j["completion_ids"] = r.output_ids;
      j["completion"] = tok.decode(r.output_ids);
      j["finish_reason"] = r.finish_reason;
      if (o->top_logits > 0) {
        auto arr = nlohmann::json::array();
        for (auto [id, v] : r.top_logits) arr.push_back({{"id", id}, {"logit", v}});
        j["top_logits"] = arr;
      }
      j["timings"] = {{"prompt_seconds", r.prompt_seconds}, {"gen_seconds", r.gen_seconds}};
      fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    const double tps = r.gen_seconds > 0 ? double(r.output_ids.size()) / r.gen_seconds : 0;
    fmt::print(stderr, "kmq: prompt {:.1f} tok/s, generation {} tokens at {:.1f} tok/s ({})\n",
               r.prompt_seconds > 0 ? double(ids.size()) / r.prompt_seconds : 0.0, r.output_ids.size(), tps,
               r.finish_reason);
    return 0;
  };
}

}  // namespace kmq::tools

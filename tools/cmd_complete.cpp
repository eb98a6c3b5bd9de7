// kmq complete: one prompt in, its completion streamed to stdout (logs on stderr);
// --json prints ids, text and optionally the top logits of the last prompt position.
// --batch-file: many prompts decoded together (generate_batch), one JSON line each.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "kmq/error.h"
#include "kmq/runtime.h"
#include "runtime/batch_file.h"

namespace kmq::tools {

namespace {

using Json = nlohmann::json;

// The batch file's parser is the library's (src/runtime/batch_file.h), fuzzed there.
std::vector<BatchItem> read_batch_file(const std::string& path, const GenerateOptions& base) {
  const std::string text = read_input_text(path);
  return parse_batch_file(text, path, batch_file_is_jsonl(path, text), base);
}

void print_progress(const BatchProgress& p, bool final) {
  const int width = 24;
  const int fill = p.total ? int(width * p.done / p.total) : width;
  const double tps = p.seconds > 0 ? double(p.gen_tokens) / p.seconds : 0.0;
  std::string eta = "?";
  if (p.done > 0) eta = fmt::format("{:.0f} s", p.seconds / double(p.done) * double(p.total - p.done));
  fmt::print(stderr, "\r[{}{}] {}/{} prompts, {} running, {:.1f} tok/s, ETA {}   ", std::string(size_t(fill), '='),
             std::string(size_t(width - fill), ' '), p.done, p.total, p.active, tps, final ? "0 s" : eta);
  if (final) fmt::print(stderr, "\n");
}

}  // namespace

Runner add_complete(CLI::App& app) {
  struct Opts {
    std::string model, prompt, file, batch_file, output, device = "cpu";
    int64_t n = 128, ctx = 0, top_logits = 0, parallel = 4;
    int threads = 0;
    SamplerOptions s;
    std::vector<std::string> stop;
    bool json = false, no_bos = false, progress = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("-m,--model", o->model, "The .kmq model")->required();
  app.add_option("-p,--prompt", o->prompt, "Prompt text");
  app.add_option("-f,--file", o->file, "Read the prompt from a file ('-' = stdin)");
  app.add_option("-n,--n-predict", o->n, "Tokens to generate at most")->capture_default_str();
  add_sampler_flags(app, o->s);
  app.add_option("--stop", o->stop, "Stop string (repeatable): the completion ends before it")
      ->expected(1)
      ->allow_extra_args(false)  // one string per --stop: "--stop a b" is an error
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("-c,--ctx", o->ctx, "Context size (default: the model's)");
  app.add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  app.add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  app.add_flag("--json", o->json, "Print one JSON object: prompt ids, completion ids and text");
  app.add_option("--top-logits", o->top_logits, "With --json: the top K logits of the last prompt position");
  app.add_flag("--no-bos", o->no_bos, "Do not add BOS/EOS tokens to the prompt");
  app.add_option("--batch-file", o->batch_file,
                 "Complete every prompt of a file: .jsonl ({\"prompt\": ..., \"id\": ...} per line, with optional\n"
                 "n_predict, temperature, top_k, top_p, min_p, seed, stop) or text (one prompt per line);\n"
                 "prints one JSON line per prompt, in input order. Prompt i (from 0) is sampled with\n"
                 "--seed + i unless it sets its own seed");
  app.add_option("--parallel", o->parallel, "With --batch-file: sequences decoded together")->capture_default_str();
  app.add_option("-o,--output", o->output, "With --batch-file: write the JSON lines to FILE (atomically)");
  app.add_flag("--progress", o->progress, "With --batch-file: a progress bar on stderr even when it is not a terminal");
  return [o]() -> int {
    if (!o->prompt.empty() && !o->file.empty()) throw Error("give the prompt with -p or -f, not both");
    if (!o->batch_file.empty() && (!o->prompt.empty() || !o->file.empty()))
      throw Error("--batch-file takes the prompts from the file: no -p or -f with it");
    if (o->batch_file.empty() && !o->output.empty()) throw Error("-o is for --batch-file (single completions go to stdout)");
    if (o->parallel < 1) throw Error(fmt::format("--parallel {}: at least 1", o->parallel));
    if (o->n < 0) throw Error(fmt::format("-n {}: must be >= 0", o->n));
    validate(o->s);
    GenerateOptions go;
    go.max_tokens = o->n;
    go.sampler = o->s;
    go.stop = o->stop;
    if (!o->batch_file.empty()) {
      auto items = read_batch_file(o->batch_file, go);
      auto model = Model::load(o->model, ModelOptions{o->device, o->threads});
      const auto& tok = model->tokenizer();
      std::vector<BatchRequest> reqs;
      for (auto& it : items) {
        it.options.top_logits = o->json ? o->top_logits : 0;
        reqs.push_back({tok.encode(it.prompt, !o->no_bos, true), it.options});
      }
      fmt::print(stderr, "kmq: {} on {}; {} prompts, {} in parallel\n", o->model, model->backend_name(), reqs.size(),
                 std::min<int64_t>(o->parallel, int64_t(reqs.size())));
      // Results are printed in input order as soon as all earlier ones are done.
      std::FILE* out = stdout;
      std::string tmp;
      if (!o->output.empty()) {
        tmp = o->output + fmt::format(".tmp-{}", ::getpid());
        out = std::fopen(tmp.c_str(), "wb");
        if (!out) throw Error(fmt::format("{}: cannot create ({})", tmp, std::strerror(errno)));
      }
      std::map<size_t, std::string> ready;
      size_t next_out = 0;
      const bool bar = o->progress || ::isatty(2);
      BatchOptions bo;
      bo.parallel = o->parallel;
      bo.n_ctx = o->ctx;
      bo.on_done = [&](size_t i, GenerateResult&& r) {
        nlohmann::ordered_json j;
        j["id"] = items[i].id;
        j["prompt"] = items[i].prompt;
        j["completion"] = r.text;
        j["prompt_tokens"] = r.prompt_ids.size();
        j["completion_tokens"] = r.output_ids.size();
        j["finish_reason"] = r.finish_reason;
        if (o->json) j["completion_ids"] = r.output_ids;
        if (o->json && o->top_logits > 0) {
          auto arr = nlohmann::ordered_json::array();
          for (auto [id, v] : r.top_logits) arr.push_back({{"id", id}, {"logit", v}});
          j["top_logits"] = arr;
        }
        j["timings"] = {{"prompt_seconds", r.prompt_seconds}, {"gen_seconds", r.gen_seconds}};
        ready[i] = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
        while (!ready.empty() && ready.begin()->first == next_out) {
          fmt::print(out, "{}\n", ready.begin()->second);
          ready.erase(ready.begin());
          ++next_out;
        }
        std::fflush(out);
      };
      BatchProgress last;
      double last_drawn = -1;
      bo.progress = [&](const BatchProgress& p) {
        last = p;
        if (bar && p.seconds - last_drawn >= 0.1) {  // at most 10 redraws a second
          print_progress(p, false);
          last_drawn = p.seconds;
        }
      };
      const auto t0 = std::chrono::steady_clock::now();
      try {
        generate_batch(*model, reqs, bo);
      } catch (...) {
        if (!tmp.empty()) {
          std::fclose(out);
          std::remove(tmp.c_str());
        }
        throw;
      }
      if (bar) print_progress(last, true);
      if (!tmp.empty()) {
        const bool ok = std::fflush(out) == 0 && ::fsync(::fileno(out)) == 0;
        std::fclose(out);
        if (!ok || std::rename(tmp.c_str(), o->output.c_str()) != 0) {
          std::remove(tmp.c_str());
          throw Error(fmt::format("{}: cannot write ({})", o->output, std::strerror(errno)));
        }
      }
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      fmt::print(stderr, "kmq: {} prompts, {} prompt tokens, {} generated tokens in {:.2f} s ({:.1f} tok/s)\n",
                 reqs.size(), last.prompt_tokens, last.gen_tokens, secs, secs > 0 ? double(last.gen_tokens) / secs : 0.0);
      return 0;
    }
    std::string prompt = o->prompt;
    if (!o->file.empty()) prompt = read_input_text(o->file);
    if (prompt.empty()) throw Error("no prompt: use -p TEXT or -f FILE (or --batch-file FILE)");
    auto model = Model::load(o->model, ModelOptions{o->device, o->threads});
    const auto& tok = model->tokenizer();
    auto ids = tok.encode(prompt, !o->no_bos, true);  // special-token text is parsed, as transformers does
    const int64_t n_ctx = o->ctx > 0 ? o->ctx : model->config().max_seq;
    if (int64_t(ids.size()) >= n_ctx)
      throw Error(fmt::format("{}: the prompt has {} tokens, which does not fit the context of {} tokens "
                              "(shorten it, or raise --ctx up to {})", o->model, ids.size(), n_ctx, model->config().max_seq));
    auto session = model->new_session(n_ctx);
    fmt::print(stderr, "kmq: {} on {}; prompt {} tokens\n", o->model, model->backend_name(), ids.size());
    go.top_logits = o->json ? o->top_logits : 0;
    if (!o->json) {
      go.on_text = [](std::string_view text) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
        return true;
      };
    }
    auto r = generate(*session, *model, ids, go, nullptr);
    if (!o->json) {
      std::fputc('\n', stdout);
    } else {
      Json j;
      j["prompt"] = prompt;
      j["prompt_ids"] = r.prompt_ids;
      j["completion_ids"] = r.output_ids;
      j["completion"] = r.text;
      j["finish_reason"] = r.finish_reason;
      if (o->top_logits > 0) {
        auto arr = Json::array();
        for (auto [id, v] : r.top_logits) arr.push_back({{"id", id}, {"logit", v}});
        j["top_logits"] = arr;
      }
      j["timings"] = {{"prompt_seconds", r.prompt_seconds}, {"gen_seconds", r.gen_seconds}};
      fmt::print("{}\n", j.dump(-1, ' ', false, Json::error_handler_t::replace));
    }
    const double tps = r.gen_seconds > 0 ? double(r.output_ids.size()) / r.gen_seconds : 0;
    fmt::print(stderr, "kmq: prompt {:.1f} tok/s, generation {} tokens at {:.1f} tok/s ({})\n",
               r.prompt_seconds > 0 ? double(ids.size()) / r.prompt_seconds : 0.0, r.output_ids.size(), tps,
               r.finish_reason);
    return 0;
  };
}

}  // namespace kmq::tools

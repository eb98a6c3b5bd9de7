// kmq chat: an interactive conversation. Each turn renders the whole conversation with the
// model's chat template, re-uses the KV cache for the longest common token prefix, and
// evaluates only the new tokens; the reply streams to stdout.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fmt/format.h>
#include <iostream>

#include "commands.h"
#include "line_editor.h"
#include "kmq/error.h"
#include "kmq/runtime.h"
#include "text/chat_template.h"

namespace kmq::tools {

namespace {

std::atomic<int> g_interrupts{0};  // Ctrl-C count since the last reply started
void on_sigint(int) { g_interrupts.fetch_add(1); }

}  // namespace

Runner add_chat(CLI::App& app) {
  struct Opts {
    std::string model, system, chat_template, device = "cpu";
    int64_t n = 512, ctx = 0;
    int threads = 0;
    SamplerOptions s;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("-m,--model", o->model, "The .kmq model")->required();
  app.add_option("-s,--system", o->system, "System prompt");
  app.add_option("--chat-template", o->chat_template,
                 "Use a built-in template instead of the model's: llama3, llama2, mistral, chatml, phi3, gemma");
  app.add_option("-n,--n-predict", o->n, "Tokens per reply at most")->capture_default_str();
  add_sampler_flags(app, o->s);
  app.add_option("-c,--ctx", o->ctx, "Context size (default: the model's)");
  app.add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  app.add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  app.footer(
      "Type a message and press Enter. Commands: /reset (forget the conversation), /stats, /exit.\n"
      "Ctrl-C stops the current reply; Ctrl-C at the prompt or Ctrl-D exits. Input may be piped:\n"
      "each line is one user turn. When the context fills, the oldest turns are dropped (the\n"
      "system prompt is kept).");
  return [o]() -> int {
    auto model = Model::load(o->model, ModelOptions{o->device, o->threads});
    const auto& tok = model->tokenizer();
    const auto& td = tok.data();
    std::string source = o->chat_template.empty() ? td.chat_template : builtin_chat_template(o->chat_template);
    if (source.empty())
      throw Error(fmt::format("{}: this model has no chat template (it is probably not instruction-tuned); "
                              "use `kmq complete`, or pick one with --chat-template NAME", o->model));
    ChatTemplate tmpl(source);
    ChatTemplateOptions topt;
    if (td.bos_id >= 0) topt.bos_token = td.tokens[size_t(td.bos_id)];
    if (td.eos_id >= 0) topt.eos_token = td.tokens[size_t(td.eos_id)];
    auto session = model->new_session(o->ctx);
    const int64_t n_ctx = session->n_ctx();
    std::vector<ChatMessage> messages;
    if (!o->system.empty()) messages.push_back({"system", o->system});
    std::vector<int32_t> cached;  // the tokens in the KV cache, in order
    int64_t turns = 0, gen_tokens = 0, eval_tokens = 0, reused_tokens = 0;
    double gen_seconds = 0;
    const bool tty = ::isatty(0);
    struct sigaction sa {};
    sa.sa_handler = on_sigint;  // no SA_RESTART: Ctrl-C at the prompt interrupts the read
    sigaction(SIGINT, &sa, nullptr);
    fmt::print(stderr, "kmq chat: {} on {}, context {} tokens. /exit to quit.\n", o->model, model->backend_name(), n_ctx);
    // On a terminal: our line editor (history, editing keys; Ctrl-C or Ctrl-D at the prompt
    // exits). Otherwise each line of stdin is one turn.
    std::unique_ptr<LineEditor> editor;
    if (tty && ::isatty(2)) editor = std::make_unique<LineEditor>(0, 2);
    for (;;) {
      std::string line;
      g_interrupts = 0;
      if (editor) {
        fmt::print(stderr, "\n");
        std::fflush(stderr);
        if (editor->read_line("> ", line) != LineEditor::Status::kLine) break;
        editor->add_history(line);
      } else {
        if (tty) fmt::print(stderr, "\n> ");
        if (!std::getline(std::cin, line)) break;  // Ctrl-D, end of piped input, or Ctrl-C
      }
      if (line.empty()) continue;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        messages.resize(o->system.empty() ? 0 : 1);
        fmt::print(stderr, "(conversation reset)\n");
        continue;
      }
      if (line == "/stats") {
        fmt::print(stderr, "turns {}, context {} / {} tokens, evaluated {} prompt tokens (re-used {} from the cache), "
                           "generated {} tokens at {:.1f} tok/s\n",
                   turns, session->n_past(), n_ctx, eval_tokens, reused_tokens, gen_tokens,
                   gen_seconds > 0 ? double(gen_tokens) / gen_seconds : 0.0);
        continue;
      }
      messages.push_back({"user", line});
      // Render; drop the oldest turns (keeping the system prompt) until prompt + reply fit.
      std::vector<int32_t> ids;
      for (;;) {
        ids = tok.encode(tmpl.render(messages, topt), false, true);
        if (int64_t(ids.size()) + o->n <= n_ctx) break;
        const size_t first = (!messages.empty() && messages[0].role == "system") ? 1 : 0;
        if (messages.size() <= first + 1) {
          if (int64_t(ids.size()) < n_ctx) break;  // a long message alone: reply with what is left
          fmt::print(stderr, "kmq chat: the message has {} tokens with the template; the context holds {}\n",
                     ids.size(), n_ctx);
          messages.pop_back();
          ids.clear();
          break;
        }
        // drop the oldest user turn and its reply
        messages.erase(messages.begin() + long(first), messages.begin() + long(std::min(first + 2, messages.size() - 1)));
        fmt::print(stderr, "(context full: dropped the oldest turn)\n");
      }
      if (ids.empty()) continue;
      // Longest common prefix with the cache (at least one token is always evaluated).
      size_t common = 0;
      while (common < cached.size() && common + 1 < ids.size() && cached[common] == ids[common]) ++common;
      session->truncate(int64_t(common));
      cached.resize(common);
      reused_tokens += int64_t(common);
      eval_tokens += int64_t(ids.size() - common);
      std::vector<int32_t> suffix(ids.begin() + long(common), ids.end());
      GenerateOptions go;
      go.max_tokens = std::min<int64_t>(o->n, n_ctx - int64_t(ids.size()));
      go.sampler = o->s;
      go.sampler.seed = o->s.seed + uint64_t(turns);
      std::string reply, pending;
      g_interrupts = 0;
      auto r = generate(*session, *model, suffix, go, [&](int32_t id) {
        const std::string piece = tok.decode_token(id);
        reply += piece;
        pending += piece;
        const size_t k = complete_utf8_prefix(pending);
        std::fwrite(pending.data(), 1, k, stdout);
        std::fflush(stdout);
        pending.erase(0, k);
        return g_interrupts.load() == 0;
      });
      std::fwrite(pending.data(), 1, pending.size(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
      if (r.finish_reason == "stopped") fmt::print(stderr, "(stopped)\n");
      cached.insert(cached.end(), suffix.begin(), suffix.end());
      // The cache holds the reply tokens except the last sampled one (not yet evaluated).
      if (!r.output_ids.empty()) cached.insert(cached.end(), r.output_ids.begin(), r.output_ids.end() - 1);
      session->truncate(int64_t(cached.size()));
      messages.push_back({"assistant", tok.decode(r.output_ids)});
      ++turns;
      gen_tokens += int64_t(r.output_ids.size());
      gen_seconds += r.gen_seconds;
    }
    fmt::print(stderr, "\n");
    return 0;
  };
}

}  // namespace kmq::tools

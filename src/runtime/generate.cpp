// generate(): evaluate the prompt, then sample one token at a time, calling back with
// each; generate_batch(): the same per-sequence logic for many prompts decoded together.
// Chat, single and batched completion differ only in the callbacks and the batch shape.
#include <algorithm>
#include <chrono>
#include <fmt/format.h>
#include <numeric>

#include "kmq/error.h"
#include "kmq/runtime.h"

namespace kmq {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Length of the longest prefix of s[0, n) that ends on a UTF-8 character boundary.
size_t utf8_boundary(const std::string& s, size_t n) {
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xc0) == 0x80) continue;  // continuation byte
    const size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

// One sequence being generated: its RNG, penalty history, text stream and result.
struct Sequence {
  const GenerateOptions* o = nullptr;
  Rng rng{0};
  std::vector<int32_t> history;  // prompt + output
  TextStream stream;
  GenerateResult r;
  Clock::time_point t_gen;

  Sequence(const GenerateOptions& opts, const std::vector<int32_t>& prompt)
      : o(&opts), rng(opts.sampler.seed), history(prompt), stream(opts.stop) {
    r.prompt_ids = prompt;
    r.finish_reason = "length";
  }

  // Samples the next token from logits; returns the token to evaluate next, or -1 when the
  // sequence is finished (r.finish_reason says why). n_room: tokens the context still holds.
  int32_t step(const float* logits, const Model& model, int64_t n_room, const TokenCallback& on_token) {
    const auto& tok = model.tokenizer();
    if (int64_t(r.output_ids.size()) >= o->max_tokens) return -1;
    const int32_t id = sample(logits, model.config().n_vocab, o->sampler, rng, history);
    if (o->stop_at_eog && tok.is_eog(id)) {
      r.finish_reason = "eos";
      return -1;
    }
    r.output_ids.push_back(id);
    history.push_back(id);
    if (on_token && !on_token(id)) {
      r.finish_reason = "stopped";
      return -1;
    }
    const std::string shown = stream.push(tok.decode_token(id));
    if (o->on_text && !shown.empty() && !o->on_text(shown)) {
      r.finish_reason = "stopped";
      return -1;
    }
    if (stream.stopped()) {
      r.finish_reason = "stop";
      return -1;
    }
    if (int64_t(r.output_ids.size()) >= o->max_tokens) return -1;
    if (n_room <= 0) {
      r.finish_reason = "context";
      return -1;
    }
    return id;
  }

  GenerateResult finish() {
    const std::string rest = stream.flush();
    if (o->on_text && !rest.empty()) o->on_text(rest);
    r.text = stream.text();
    r.gen_seconds = seconds_since(t_gen);
    return std::move(r);
  }
};

void top_logits_of(GenerateResult& r, const std::vector<float>& logits, int64_t n_vocab, int64_t k) {
  std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
  std::iota(ids.begin(), ids.end(), 0);
  k = std::min(k, n_vocab);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int64_t i = 0; i < k; ++i) r.top_logits.emplace_back(ids[i], logits[ids[i]]);
}

}  // namespace

TextStream::TextStream(std::vector<std::string> stop) : stop_(std::move(stop)) {
  std::erase_if(stop_, [](const std::string& s) { return s.empty(); });
}

std::string TextStream::push(std::string_view piece) {
  if (stopped_) return {};
  text_ += piece;
  // A stop string can only begin at or after shown_ (a possible beginning is held back).
  size_t hit = std::string::npos;
  for (const auto& s : stop_) hit = std::min(hit, text_.find(s, shown_));
  if (hit != std::string::npos) {
    text_.resize(hit);
    stopped_ = true;
    std::string out = text_.substr(shown_);
    shown_ = text_.size();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of a stop string.
  size_t safe = text_.size();
  for (const auto& s : stop_) {
    for (size_t len = std::min(s.size() - 1, text_.size() - shown_); len > 0; --len) {
      if (text_.compare(text_.size() - len, len, s, 0, len) == 0) {
        safe = std::min(safe, text_.size() - len);
        break;
      }
    }
  }
  safe = std::max(shown_, utf8_boundary(text_, safe));
  std::string out = text_.substr(shown_, safe - shown_);
  shown_ = safe;
  return out;
}

std::string TextStream::flush() {
  std::string out = text_.substr(shown_);
  shown_ = text_.size();
  return out;
}

GenerateResult generate(Session& session, const Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& o, const TokenCallback& on_token) {
  if (prompt.empty()) throw Error("the prompt is empty (no tokens)");
  if (session.n_past() + int64_t(prompt.size()) > session.n_ctx())
    throw Error(fmt::format("the prompt has {} tokens but the context holds {} (use a shorter prompt or a larger --ctx, up to {})",
                            prompt.size(), session.n_ctx() - session.n_past(), model.config().max_seq));
  validate(o.sampler);
  const int64_t n_vocab = model.config().n_vocab;
  Sequence seq(o, prompt);
  std::vector<float> logits;
  auto t0 = Clock::now();
  session.eval(prompt, &logits, 1);
  seq.r.prompt_seconds = seconds_since(t0);
  if (o.top_logits > 0) top_logits_of(seq.r, logits, n_vocab, o.top_logits);
  seq.t_gen = Clock::now();
  for (;;) {
    const int32_t id = seq.step(logits.data(), model, session.n_ctx() - session.n_past(), on_token);
    if (id < 0) break;
    session.eval({id}, &logits, 1);
  }
  return seq.finish();
}

void generate_batch(Model& model, const std::vector<BatchRequest>& requests, const BatchOptions& o) {
  const auto& c = model.config();
  const int64_t n_ctx = o.n_ctx > 0 ? o.n_ctx : c.max_seq;
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& q = requests[i];
    if (q.prompt.empty()) throw Error(fmt::format("prompt {}: empty (no tokens)", i + 1));
    if (int64_t(q.prompt.size()) >= n_ctx)
      throw Error(fmt::format("prompt {}: {} tokens do not fit the context of {} tokens (shorten it, or raise --ctx up to {})",
                              i + 1, q.prompt.size(), n_ctx, c.max_seq));
    validate(q.options.sampler);
  }
  const int64_t parallel = std::max<int64_t>(1, std::min<int64_t>(o.parallel, int64_t(requests.size())));
  struct Slot {
    std::unique_ptr<Session> session;
    std::unique_ptr<Sequence> seq;
    size_t index = 0;
    int32_t next = -1;  // the token to evaluate in the next step
  };
  std::vector<Slot> slots(static_cast<size_t>(parallel));
  for (auto& s : slots) s.session = model.new_session(n_ctx);
  BatchProgress prog;
  prog.total = int64_t(requests.size());
  size_t next_request = 0;
  const auto t0 = Clock::now();
  std::vector<float> logits;
  auto finish = [&](Slot& s) {
    GenerateResult r = s.seq->finish();
    s.seq.reset();
    ++prog.done;
    if (o.on_done) o.on_done(s.index, std::move(r));
  };
  // Samples a slot's next token from its logits; finishes the sequence if it is done.
  auto advance = [&](Slot& s, const float* lg) {
    const size_t before = s.seq->r.output_ids.size();
    s.next = s.seq->step(lg, model, s.session->n_ctx() - s.session->n_past(), nullptr);
    prog.gen_tokens += int64_t(s.seq->r.output_ids.size() - before);
    if (s.next < 0) finish(s);
  };
  // Fills a free slot with the next request: prompt evaluated alone, first token sampled.
  auto start = [&](Slot& s) {
    while (!s.seq && next_request < requests.size()) {
      s.index = next_request++;
      const auto& q = requests[s.index];
      s.seq = std::make_unique<Sequence>(q.options, q.prompt);
      s.session->reset();
      auto t = Clock::now();
      s.session->eval(q.prompt, &logits, 1);
      s.seq->r.prompt_seconds = seconds_since(t);
      prog.prompt_tokens += int64_t(q.prompt.size());
      if (q.options.top_logits > 0) top_logits_of(s.seq->r, logits, c.n_vocab, q.options.top_logits);
      s.seq->t_gen = Clock::now();
      advance(s, logits.data());
    }
  };
  for (;;) {
    for (auto& s : slots) start(s);
    std::vector<Session*> sessions;
    std::vector<int32_t> tokens;
    std::vector<Slot*> active;
    for (auto& s : slots)
      if (s.seq) {
        sessions.push_back(s.session.get());
        tokens.push_back(s.next);
        active.push_back(&s);
      }
    if (active.empty()) break;
    model.decode_batch(sessions, tokens, &logits);
    for (size_t i = 0; i < active.size(); ++i) advance(*active[i], logits.data() + i * size_t(c.n_vocab));
    prog.active = 0;
    for (auto& s : slots) prog.active += s.seq ? 1 : 0;
    prog.seconds = seconds_since(t0);
    if (o.progress) o.progress(prog);
  }
  prog.active = 0;
  prog.seconds = seconds_since(t0);
  if (o.progress) o.progress(prog);
}

}  // namespace kmq

// kmq bench: llama-bench for .kmq files. For each model x thread count: prompt processing
// (pp: p tokens in one eval) and generation (tg: n tokens one at a time), both from an
// empty context, mean ± stddev over repetitions after a warm-up; weight bytes each token
// reads, achieved GB/s and its share of the read bandwidth measured in the same run.
#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "commands.h"
#include "kmq/bench.h"
#include "kmq/error.h"
#include "util/mem_bandwidth.h"

namespace kmq::tools {
namespace {

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown";
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string human_bytes(double b) {
  return b >= 1e9 ? fmt::format("{:.2f} GB", b / 1e9) : fmt::format("{:.1f} MB", b / 1e6);
}

std::string human_count(double n) {
  return n >= 1e9 ? fmt::format("{:.2f} B", n / 1e9) : fmt::format("{:.1f} M", n / 1e6);
}

struct ModelFacts {
  std::string path, name;
  uint64_t file_bytes = 0, weight_bytes = 0, n_params = 0, bytes_per_token = 0;
  double bpw = 0;  // all tensors, bits per weight as stored
};

ModelFacts facts_of(const std::string& path, const Model& m) {
  ModelFacts f;
  f.path = path;
  f.name = std::filesystem::path(path).filename().string();
  f.file_bytes = m.file().file_size();
  for (const auto& t : m.file().tensors()) {
    f.weight_bytes += t.file_size;
    f.n_params += uint64_t(t.numel());
  }
  f.bpw = f.n_params ? 8.0 * double(f.weight_bytes) / double(f.n_params) : 0;
  f.bytes_per_token = weight_bytes_per_token(m.file());
  return f;
}

}  // namespace

Runner add_bench(CLI::App& app) {
  struct Opts {
    std::vector<std::string> models;
    std::vector<int64_t> n_prompt{512}, n_gen{128};
    std::vector<int> threads, batch;
    int reps = 5, bw_passes = 5;
    int64_t bw_mib = 1024;
    std::string device = "cpu", json_out;
    bool json = false, markdown = false, no_warmup = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("-m,--model", o->models, "A .kmq model (repeat for several)")->required();
  app.add_option("-p,--n-prompt", o->n_prompt, "Prompt tokens per pp test (comma list; 0: no pp test)")
      ->delimiter(',')->capture_default_str();
  app.add_option("-n,--n-gen", o->n_gen, "Tokens per tg test (comma list; 0: no tg test)")
      ->delimiter(',')->capture_default_str();
  app.add_option("-t,--threads", o->threads, "Thread counts (comma list; default: all cores)")->delimiter(',');
  app.add_option("-b,--batch", o->batch,
                 "Sequences decoded together in tg tests (comma list; 1: one sequence, as llama-bench)")
      ->delimiter(',');
  app.add_option("-r,--repetitions", o->reps, "Timed repetitions per test (after one warm-up)")
      ->capture_default_str()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  app.add_option("--bw-mib", o->bw_mib, "Buffer of the bandwidth probe in MiB (0: skip the probe)")->capture_default_str();
  app.add_option("--bw-passes", o->bw_passes, "Timed passes of the bandwidth probe (the best counts)")
      ->capture_default_str();
  app.add_flag("--no-warmup", o->no_warmup, "Skip the warm-up run before each test");
  app.add_flag("--json", o->json, "Print one JSON object instead of the markdown table");
  app.add_flag("--markdown", o->markdown, "Print a markdown table (the default)");
  app.add_option("--json-out", o->json_out, "Also write the JSON object to FILE");
  return [o]() -> int {
    if (o->json && o->markdown) throw Error("give --json or --markdown, not both");
    if (o->reps < 1) throw Error(fmt::format("-r/--repetitions must be at least 1 (got {})", o->reps));
    if (o->bw_mib < 0 || o->bw_mib > (int64_t(1) << 20)) throw Error(fmt::format("--bw-mib {} out of range", o->bw_mib));
    if (o->bw_passes < 1) throw Error(fmt::format("--bw-passes must be at least 1 (got {})", o->bw_passes));
    for (int64_t p : o->n_prompt)
      if (p < 0) throw Error(fmt::format("-p/--n-prompt {} is negative", p));
    for (int64_t n : o->n_gen)
      if (n < 0) throw Error(fmt::format("-n/--n-gen {} is negative", n));
    std::erase(o->n_prompt, 0);
    std::erase(o->n_gen, 0);
    if (o->n_prompt.empty() && o->n_gen.empty()) throw Error("nothing to measure: -p and -n are both 0");
    if (o->threads.empty()) o->threads.push_back(int(std::max(1u, std::thread::hardware_concurrency())));
    for (int t : o->threads)
      if (t < 1) throw Error(fmt::format("-t/--threads {} must be at least 1", t));
    if (o->batch.empty()) o->batch.push_back(1);
    for (int b : o->batch)
      if (b < 1 || b > 4096) throw Error(fmt::format("-b/--batch {} must be in [1, 4096]", b));
    for (const auto& m : o->models)
      if (!std::filesystem::exists(m)) throw Error(m + ": no such file");
    if (!o->json_out.empty() && !std::ofstream(o->json_out, std::ios::app))
      throw Error(o->json_out + ": cannot write");  // before the run, not after it
    const bool cpu = o->device == "cpu";

    // The roofline: host read bandwidth per thread count, probed before any model runs and
    // again after every generation test with that thread count; the best probe counts (on a
    // shared machine one probe can land in a slow moment and flatter the share of
    // bandwidth: the best of several is the conservative reference).
    struct Probes {
      BandwidthResult best;
      double worst = 0;
      int n = 0;
    };
    std::map<int, Probes> bw;
    auto probe = [&](int t) {
      if (!cpu || o->bw_mib <= 0) return;
      fmt::print(stderr, "kmq bench: read bandwidth, {} thread(s), {} MiB buffer... ", t, o->bw_mib);
      const BandwidthResult r = measure_read_bandwidth(t, uint64_t(o->bw_mib) << 20, o->bw_passes);
      fmt::print(stderr, "{:.1f} GB/s\n", r.gb_per_s);
      Probes& p = bw[t];
      if (p.n == 0 || r.gb_per_s > p.best.gb_per_s) p.best = r;
      p.worst = p.n == 0 ? r.gb_per_s : std::min(p.worst, r.gb_per_s);
      ++p.n;
    };
    for (int t : o->threads)
      if (!bw.count(t)) probe(t);

    nlohmann::json results = nlohmann::json::array();
    struct Row {
      ModelFacts f;
      std::string backend, test;
      int threads;
      SpeedStats s;
      double gbs = -1, pct = -1;
    };
    std::vector<Row> rows;
    for (const auto& path : o->models) {
      for (int t : o->threads) {
        auto model = Model::load(path, ModelOptions{o->device, t});
        const ModelFacts f = facts_of(path, *model);
        const auto& c = model->config();
        int64_t need = 1;
        for (int64_t p : o->n_prompt) need = std::max(need, p);
        for (int64_t n : o->n_gen) need = std::max(need, n);
        if (need > c.max_seq)
          throw Error(fmt::format("{}: a test needs a context of {} tokens but the model holds {}", path, need, c.max_seq));
        auto session = model->new_session(need);
        const std::string backend = model->backend_name();
        int64_t n_gen_max = 1;
        for (int64_t n : o->n_gen) n_gen_max = std::max(n_gen_max, n);
        auto run = [&](const std::string& test, int64_t n_tok, bool gen, int batch) {
          const auto tokens = bench_tokens(c, n_tok);
          // Batched generation: `batch` sessions stepped together; tokens/s counts all.
          std::vector<std::unique_ptr<Session>> owned;
          std::vector<Session*> seqs;
          if (gen && batch > 1)
            for (int i = 0; i < batch; ++i) {
              owned.push_back(model->new_session(n_gen_max));
              seqs.push_back(owned.back().get());
            }
          auto once = [&](const std::vector<int32_t>& toks) {
            if (!gen) return time_prompt(*session, toks);
            return batch > 1 ? time_batch_generation(*model, seqs, toks) : time_generation(*session, toks);
          };
          if (!o->no_warmup) {
            fmt::print(stderr, "kmq bench: {} t={} {} warm-up\n", f.name, t, test);
            once(gen ? std::vector<int32_t>{tokens[0]} : tokens);  // tg: one token, as llama-bench
          }
          std::vector<double> secs;
          const int64_t counted = gen ? n_tok * batch : n_tok;
          for (int r = 0; r < o->reps; ++r) {
            secs.push_back(once(tokens));
            fmt::print(stderr, "kmq bench: {} t={} {} rep {}/{}: {:.2f} tok/s\n", f.name, t, test, r + 1, o->reps,
                       double(counted) / secs.back());
          }
          Row row{f, backend, test, t, tokens_per_second(counted, secs)};
          nlohmann::json j = {{"model", f.path},
                              {"model_name", f.name},
                              {"model_config_name", c.name},
                              {"file_bytes", f.file_bytes},
                              {"n_params", f.n_params},
                              {"bits_per_weight", f.bpw},
                              {"bytes_per_token", f.bytes_per_token},
                              {"device", o->device},
                              {"backend", backend},
                              {"threads", t},
                              {"test", test},
                              {"n_prompt", gen ? 0 : n_tok},
                              {"n_gen", gen ? n_tok : 0},
                              {"batch", gen ? batch : 1},
                              {"repetitions", o->reps},
                              {"seconds", secs},
                              {"tok_s_mean", row.s.mean},
                              {"tok_s_stddev", row.s.stddev}};
          // Weights read per second: meaningful for generation, where each token reads them
          // all; a prompt batch reads them once for all its tokens.
          j["gb_per_s"] = nullptr;
          j["bandwidth_gb_per_s"] = nullptr;
          j["bandwidth_pct"] = nullptr;
          if (gen) {
            // a batched step reads the weights once for all its sequences
            row.gbs = double(f.bytes_per_token) * row.s.mean / double(batch) / 1e9;
            j["gb_per_s"] = row.gbs;
          }
          rows.push_back(row);
          results.push_back(j);
          if (gen) probe(t);
        };
        for (int64_t p : o->n_prompt) run(fmt::format("pp{}", p), p, false, 1);
        for (int64_t n : o->n_gen)
          for (int b : o->batch) run(b > 1 ? fmt::format("tg{} b{}", n, b) : fmt::format("tg{}", n), n, true, b);
      }
    }

    // shares of bandwidth against the best probe of the whole run
    for (size_t i = 0; i < rows.size(); ++i) {
      Row& r = rows[i];
      if (r.gbs < 0 || !bw.count(r.threads)) continue;
      r.pct = 100.0 * r.gbs / bw[r.threads].best.gb_per_s;
      results[i]["bandwidth_gb_per_s"] = bw[r.threads].best.gb_per_s;
      results[i]["bandwidth_pct"] = r.pct;
    }
    {
      nlohmann::json bwj = nlohmann::json::array();
      for (const auto& [t, p] : bw) {
        const BandwidthResult& b = p.best;
        bwj.push_back({{"threads", t}, {"gb_per_s", b.gb_per_s}, {"mean_gb_per_s", b.mean_gb_per_s},
                       {"buffer_bytes", b.bytes}, {"passes", b.passes}, {"probes", p.n},
                       {"worst_probe_gb_per_s", p.worst}});
      }
      nlohmann::json j = {{"kmq_version", "0.1.0"}, {"date", utc_now()},     {"cpu", cpu_name()},
                          {"hardware_threads", std::thread::hardware_concurrency()},
                          {"device", o->device},    {"bandwidth", bwj},      {"results", results}};
      if (!o->json_out.empty()) {
        std::ofstream f(o->json_out);
        f << j.dump(2) << "\n";
        if (!f) throw Error(o->json_out + ": cannot write");
      }
      if (o->json) {
        fmt::print("{}\n", j.dump(2));
        return 0;
      }
    }
    fmt::print("| model | size | params | bpw | bytes/token | backend | threads | test | t/s | GB/s | % of bw |\n");
    fmt::print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (const auto& r : rows)
      fmt::print("| {} | {} | {} | {:.2f} | {} | {} | {} | {} | {:.2f} ± {:.2f} | {} | {} |\n", r.f.name,
                 human_bytes(double(r.f.file_bytes)), human_count(double(r.f.n_params)), r.f.bpw,
                 human_bytes(double(r.f.bytes_per_token)), r.backend, r.threads, r.test, r.s.mean, r.s.stddev,
                 r.gbs >= 0 ? fmt::format("{:.2f}", r.gbs) : "", r.pct >= 0 ? fmt::format("{:.1f}%", r.pct) : "");
    fmt::print("\n");
    for (const auto& [t, p] : bw)
      fmt::print("read bandwidth, {} thread(s): {:.2f} GB/s (the best of {} probe(s) in this run, each the best of "
                 "{} passes over {} MiB; that probe's mean {:.2f}, the worst probe {:.2f})\n",
                 t, p.best.gb_per_s, p.n, p.best.passes, p.best.bytes >> 20, p.best.mean_gb_per_s, p.worst);
    if (!cpu) fmt::print("read bandwidth: not measured for --device {} (the probe reads host memory)\n", o->device);
    fmt::print("{}; {}; pp: one eval of p tokens, tg: n tokens one at a time (tgN bB: B sequences decoded together, "
               "t/s counts all of them, GB/s the weights read once per step), all from an empty context; "
               "mean ± stddev over {} repetition(s)\n",
               cpu_name(), utc_now(), o->reps);
    return 0;
  };
}

}  // namespace kmq::tools

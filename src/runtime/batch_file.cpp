// The batch-file parser of `kmq complete --batch-file` (batch_file.h).
#include "runtime/batch_file.h"

#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <sstream>

#include "kmq/error.h"
#include "kmq/sampling.h"

namespace kmq {

using Json = nlohmann::json;

bool batch_file_is_jsonl(const std::string& path, const std::string& text) {
  const std::string ext = std::filesystem::path(path).extension().string();
  bool jsonl = ext == ".jsonl" || ext == ".json" || ext == ".ndjson";
  if (ext != ".txt" && !jsonl) {
    const size_t first = text.find_first_not_of(" \t\r\n");
    jsonl = first != std::string::npos && text[first] == '{';
  }
  return jsonl;
}

std::vector<BatchItem> parse_batch_file(const std::string& text, const std::string& path, bool jsonl,
                                        const GenerateOptions& base) {
  std::vector<BatchItem> items;
  std::istringstream in(text);
  std::string line;
  for (int64_t ln = 1; std::getline(in, line); ++ln) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    BatchItem it;
    it.id = ln;
    it.options = base;
    it.options.sampler.seed = base.sampler.seed + uint64_t(items.size());
    if (!jsonl) {
      it.prompt = line;
      items.push_back(std::move(it));
      continue;
    }
    auto bad = [&](const std::string& why) { return Error(fmt::format("{}:{}: {}", path, ln, why)); };
    // Numbers are range-checked before any conversion (a double out of a float's or an
    // integer's range would be undefined behaviour).
    auto integer = [&](const std::string& key, const Json& v, int64_t lo, int64_t hi) -> int64_t {
      if (!v.is_number_integer()) throw bad(fmt::format("\"{}\" must be an integer", key));
      if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi))
        throw bad(fmt::format("\"{}\" must be in [{}, {}]", key, lo, hi));
      const int64_t x = v.get<int64_t>();
      if (x < lo || x > hi) throw bad(fmt::format("\"{}\" must be in [{}, {}]", key, lo, hi));
      return x;
    };
    auto real = [&](const std::string& key, const Json& v) -> float {
      if (!v.is_number()) throw bad(fmt::format("\"{}\" must be a number", key));
      const double d = v.get<double>();
      if (!std::isfinite(d) || std::abs(d) > 1e6) throw bad(fmt::format("\"{}\" must be a finite number of reasonable size", key));
      return float(d);
    };
    Json j;
    try {
      j = Json::parse(line);
    } catch (const Json::exception& e) {  // parse_error, and out_of_range for numbers like 1e3004
      throw bad(fmt::format("not valid JSON ({})", e.what()));
    }
    if (!j.is_object()) throw bad("expected a JSON object like {\"prompt\": \"...\"}");
    try {
      for (auto& [key, v] : j.items()) {
        if (key == "prompt") {
          if (!v.is_string()) throw bad("\"prompt\" must be a string");
          it.prompt = v.get<std::string>();
        } else if (key == "id") {
          it.id = v;
        } else if (key == "n_predict" || key == "max_tokens") {
          it.options.max_tokens = integer(key, v, 0, int64_t(1) << 40);
        } else if (key == "temperature") {
          it.options.sampler.temperature = real(key, v);
        } else if (key == "top_k") {
          it.options.sampler.top_k = int(integer(key, v, 0, int64_t(1) << 30));
        } else if (key == "top_p") {
          it.options.sampler.top_p = real(key, v);
        } else if (key == "min_p") {
          it.options.sampler.min_p = real(key, v);
        } else if (key == "seed") {
          if (!v.is_number_unsigned()) throw bad("\"seed\" must be an integer >= 0");
          it.options.sampler.seed = v.get<uint64_t>();
        } else if (key == "stop") {
          it.options.stop = v.is_string() ? std::vector<std::string>{v.get<std::string>()} : v.get<std::vector<std::string>>();
        } else {
          throw bad(fmt::format("unknown key \"{}\" (known: prompt, id, n_predict, temperature, top_k, top_p, "
                                "min_p, seed, stop)", key));
        }
      }
    } catch (const Json::exception& e) {
      throw bad(fmt::format("a value has the wrong type ({})", e.what()));
    }
    if (!j.contains("prompt")) throw bad("no \"prompt\"");
    try {
      validate(it.options.sampler);
    } catch (const Error& e) {
      throw bad(e.what());
    }
    if (it.options.max_tokens < 0) throw bad("\"n_predict\" must be >= 0");
    items.push_back(std::move(it));
  }
  if (items.empty()) throw Error(fmt::format("{}: no prompts", path));
  return items;
}

}  // namespace kmq

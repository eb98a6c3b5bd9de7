// Hugging Face model directories: tokenizer.json or tokenizer.model (SentencePiece protobuf
// or tiktoken text, told apart by content), then tokenizer_config.json,
// generation_config.json (extra end-of-generation ids) and chat_template.jinja.
#include <fmt/format.h>

#include <charconv>

#include "kmq/error.h"
#include "text/hf_json.h"
#include "text/tokenizer_internal.h"
#include "util/mmap_file.h"

namespace kmq {
namespace text {
namespace {

using Json = nlohmann::json;

// A special-token entry of tokenizer_config.json: "text" or {"content": "text", ...}.
std::string token_text(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return {};
}

void set_special(TokenizerData& d, const Json& cfg, const char* key, int32_t& id) {
  const auto it = cfg.find(key);
  if (it == cfg.end()) return;
  const std::string t = token_text(*it);
  if (t.empty()) return;
  if (const int32_t found = find_token(d, t); found >= 0) id = found;
}

}  // namespace

void apply_tokenizer_config(TokenizerData& d, const Json& cfg, const std::string& where) {
  if (!cfg.is_object()) throw Error(where + ": not a JSON object");
  if (const auto atd = cfg.find("added_tokens_decoder"); atd != cfg.end() && atd->is_object()) {
    for (auto it = atd->begin(); it != atd->end(); ++it) {
      int64_t id = -1;
      const std::string& k = it.key();
      const auto [end, ec] = std::from_chars(k.data(), k.data() + k.size(), id);
      if (ec != std::errc() || end != k.data() + k.size() || id < 0 || size_t(id) >= kMaxVocab ||
          size_t(id) >= d.tokens.size() + 65536)
        throw Error(fmt::format("{}: added_tokens_decoder: bad id '{}'", where, k));
      const std::string content = token_text(it.value());
      if (content.empty())
        throw Error(fmt::format("{}: added_tokens_decoder: token {} has no content", where, id));
      const bool special = it.value().is_object() && it.value().value("special", false);
      if (size_t(id) >= d.tokens.size()) {
        d.tokens.resize(size_t(id) + 1);
        d.types.resize(size_t(id) + 1, TokenType::kUnused);
        if (!d.scores.empty()) d.scores.resize(size_t(id) + 1, 0.0f);
      }
      TokenType& type = d.types[id];
      if (type == TokenType::kUnknown || type == TokenType::kByte) continue;
      if (d.tokens[id] == content && type != TokenType::kNormal) continue;  // already special
      d.tokens[id] = content;
      type = special ? TokenType::kControl : TokenType::kUserDefined;
    }
  }
  set_special(d, cfg, "bos_token", d.bos_id);
  set_special(d, cfg, "eos_token", d.eos_id);
  set_special(d, cfg, "unk_token", d.unk_id);
  set_special(d, cfg, "pad_token", d.pad_id);
  if (const auto it = cfg.find("add_bos_token"); it != cfg.end() && it->is_boolean())
    d.add_bos = it->get<bool>() && d.bos_id >= 0;
  if (const auto it = cfg.find("add_eos_token"); it != cfg.end() && it->is_boolean())
    d.add_eos = it->get<bool>() && d.eos_id >= 0;
  if (const auto it = cfg.find("chat_template"); it != cfg.end()) {
    if (it->is_string()) {
      d.chat_template = it->get<std::string>();
    } else if (it->is_array()) {
      std::string first, dflt;
      for (const auto& t : *it) {
        if (!t.is_object() || !t.contains("template") || !t["template"].is_string()) continue;
        const std::string tmpl = t["template"].get<std::string>();
        if (first.empty()) first = tmpl;
        if (t.value("name", std::string()) == "default") dflt = tmpl;
      }
      d.chat_template = dflt.empty() ? first : dflt;
    }
  }
}

}  // namespace text

TokenizerData load_tokenizer_hf_dir(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  const fs::path tj = dir / "tokenizer.json", tm = dir / "tokenizer.model";
  TokenizerData d;
  const auto model_is_tiktoken = [&] {
    MappedFile f(tm);
    return text::looks_like_tiktoken(
        std::string_view(reinterpret_cast<const char*>(f.data()), std::min<size_t>(f.size(), 4096)));
  };
  if (fs::exists(tj)) {
    d = load_tokenizer_hf_json(tj);
    // SentencePiece-style tokenizer.json has no scores; the .model beside it has the real ones.
    if (d.kind == TokenizerKind::kSpm && fs::exists(tm) && !model_is_tiktoken())
      d = load_tokenizer_spm_model(tm);
  } else if (fs::exists(tm)) {
    d = model_is_tiktoken() ? load_tokenizer_tiktoken(tm) : load_tokenizer_spm_model(tm);
  } else {
    throw Error(dir.string() + ": neither tokenizer.json nor tokenizer.model found");
  }
  if (const fs::path cfg = dir / "tokenizer_config.json"; fs::exists(cfg))
    text::apply_tokenizer_config(d, text::read_json_file(cfg), cfg.string());
  if (d.chat_template.empty()) {
    if (const fs::path jinja = dir / "chat_template.jinja"; fs::exists(jinja))
      d.chat_template = read_text_file(jinja);
  }
  std::vector<int32_t> extra_eog;
  if (const fs::path gen = dir / "generation_config.json"; fs::exists(gen)) {
    const nlohmann::json g = text::read_json_file(gen);
    if (g.is_object() && g.contains("eos_token_id")) {
      const auto& e = g["eos_token_id"];
      if (e.is_number_integer())
        extra_eog.push_back(e.get<int32_t>());
      else if (e.is_array())
        for (const auto& x : e)
          if (x.is_number_integer()) extra_eog.push_back(x.get<int32_t>());
    }
  }
  text::set_eog_ids(d, extra_eog);
  text::validate_tokenizer_data(d, dir.string());
  return d;
}

}  // namespace kmq

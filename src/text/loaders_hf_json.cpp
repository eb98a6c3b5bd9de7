// Hugging Face tokenizer.json (BPE models) and GPT-2's vocab.json + merges.txt.
#include <fmt/format.h>

#include <algorithm>

#include "kmq/error.h"
#include "text/hf_json.h"
#include "text/pretokenize.h"
#include "text/spm.h"
#include "text/text_util.h"
#include "text/tokenizer_internal.h"
#include "util/mmap_file.h"

namespace kmq {
namespace text {
namespace {

using Json = nlohmann::json;

std::string str_or(const Json& j, const char* key, const std::string& dflt = {}) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : dflt;
}
bool bool_or(const Json& j, const char* key, bool dflt) {
  const auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : dflt;
}

// Calls fn(component) for a component and, for "Sequence", for each of its children.
template <class Fn>
void for_each_component(const Json& j, const char* list_key, Fn&& fn) {
  if (!j.is_object()) return;
  if (str_or(j, "type") == "Sequence") {
    const auto it = j.find(list_key);
    if (it != j.end() && it->is_array())
      for (const auto& c : *it) for_each_component(c, list_key, fn);
    return;
  }
  fn(j);
}

int64_t checked_id(const Json& v, const std::string& what) {
  if (!v.is_number_integer()) throw Error(what + ": id is not an integer");
  const int64_t id =
      v.is_number_unsigned() ? int64_t(std::min<uint64_t>(v.get<uint64_t>(), kMaxVocab)) : v.get<int64_t>();
  if (id < 0 || size_t(id) >= kMaxVocab) throw Error(fmt::format("{}: id {} out of range", what, id));
  return id;
}

std::pair<std::string, std::string> merge_pair(const Json& m, size_t r, const std::string& where) {
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
      throw Error(fmt::format("{}: merge {} '{}' is not \"a b\"", where, r, s));
    return {s.substr(0, sp), s.substr(sp + 1)};
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  throw Error(fmt::format("{}: merge {} is neither \"a b\" nor [\"a\", \"b\"]", where, r));
}

std::string unmap_gpt2(const std::string& s, const std::string& what) {
  std::string out;
  if (!gpt2_unicode_to_bytes(s, out)) throw Error(what + ": '" + s + "' is not in GPT-2 byte-level form");
  return out;
}

// Reads model.vocab into d.tokens (mapped through `conv`), with holes as kUnused.
template <class Conv>
void read_vocab(TokenizerData& d, const Json& vocab, const Json* added, const std::string& where,
                Conv&& conv) {
  if (!vocab.is_object()) throw Error(where + ": model.vocab is not an object");
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    max_id = std::max(max_id, checked_id(it.value(), where + ": vocab '" + it.key() + "'"));
  size_t count = vocab.size();
  if (added && added->is_array()) {
    for (const auto& a : *added) {
      if (!a.is_object() || !a.contains("id")) throw Error(where + ": added_tokens entry without id");
      max_id = std::max(max_id, checked_id(a["id"], where + ": added token"));
    }
    count += added->size();
  }
  if (max_id < 0) throw Error(where + ": empty vocabulary");
  if (size_t(max_id) >= 2 * count + 1024)
    throw Error(fmt::format("{}: id {} is implausible for {} tokens", where, max_id, count));
  d.tokens.assign(size_t(max_id) + 1, std::string());
  d.types.assign(size_t(max_id) + 1, TokenType::kUnused);
  // Added tokens first: their content is raw text, and a vocab entry with the same id is
  // then not converted (it need not be in the vocab's encoding).
  if (added && added->is_array()) {
    for (const auto& a : *added) {
      const size_t id = size_t(a["id"].get<int64_t>());
      const auto c = a.find("content");
      if (c == a.end() || !c->is_string())
        throw Error(fmt::format("{}: added token {} has no content", where, id));
      d.tokens[id] = c->get<std::string>();
      d.types[id] = bool_or(a, "special", false) ? TokenType::kControl : TokenType::kUserDefined;
    }
  }
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const size_t id = size_t(it.value().get<int64_t>());
    if (d.types[id] != TokenType::kUnused) continue;
    d.tokens[id] = conv(it.key());
    d.types[id] = TokenType::kNormal;
  }
}

int32_t find_first(const TokenizerData& d, std::initializer_list<std::string_view> names) {
  for (auto n : names)
    if (const int32_t id = find_token(d, n); id >= 0) return id;
  return -1;
}

// TemplateProcessing: a SpecialToken before $A means BOS, one after it EOS.
void read_post_processor(TokenizerData& d, const Json& pp, const std::string& where) {
  for_each_component(pp, "processors", [&](const Json& c) {
    if (str_or(c, "type") != "TemplateProcessing") return;
    const auto single = c.find("single");
    if (single == c.end() || !single->is_array()) return;
    bool seen_seq = false;
    for (const auto& item : *single) {
      if (item.contains("Sequence")) {
        seen_seq = true;
        continue;
      }
      const auto st = item.find("SpecialToken");
      if (st == item.end() || !st->is_object()) continue;
      const std::string name = str_or(*st, "id");
      int32_t id = -1;
      const auto sp = c.find("special_tokens");
      // find(), never const operator[]: a missing key there is undefined behaviour (fuzzing found it).
      if (sp != c.end() && sp->is_object()) {
        const auto entry = sp->find(name);
        if (entry != sp->end() && entry->is_object()) {
          const auto ids = entry->find("ids");
          if (ids != entry->end() && ids->is_array() && ids->size() == 1)
            id = int32_t(checked_id((*ids)[0], where + ": post_processor"));
        }
      }
      if (id < 0) id = find_token(d, name);
      if (id < 0 || size_t(id) >= d.tokens.size())
        throw Error(where + ": post_processor token '" + name + "' is not a token");
      if (!seen_seq) {
        d.bos_id = id;
        d.add_bos = true;
      } else {
        d.eos_id = id;
        d.add_eos = true;
      }
    }
  });
}

std::string read_pre_tokenizer(const Json& j, const std::string& where) {
  std::string name;
  bool byte_level_regex = false;
  for_each_component(j, "pretokenizers", [&](const Json& c) {
    const std::string type = str_or(c, "type");
    if (type == "Split") {
      const auto pat = c.find("pattern");
      const std::string re = pat != c.end() && pat->is_object() ? str_or(*pat, "Regex") : std::string();
      const std::string n = pre_tokenizer_name_for_regex(re);
      if (n.empty()) throw Error(where + ": unsupported pre-tokenizer Split pattern '" + re + "'");
      if (!name.empty() && name != n) throw Error(where + ": several Split pre-tokenizers are not supported");
      name = n;
    } else if (type == "ByteLevel") {
      if (bool_or(c, "add_prefix_space", false))
        throw Error(where + ": ByteLevel add_prefix_space=true is not supported");
      byte_level_regex = bool_or(c, "use_regex", true);
    } else {
      throw Error(where + ": unsupported pre-tokenizer type '" + type + "'");
    }
  });
  if (byte_level_regex) {
    if (!name.empty()) throw Error(where + ": Split followed by a regex ByteLevel is not supported");
    name = "gpt2";
  }
  if (name.empty()) throw Error(where + ": byte-level tokenizer without a pre-tokenizer regex");
  return name;
}

bool mentions(const Json& j, const char* what) { return j.dump().find(what) != std::string::npos; }

// ignore_merges (Llama-3): a piece that is a token is taken whole. When the merges are in
// rank order (merge k yields a token with an id not below that of merge k-1, as for any
// vocabulary converted from tiktoken), that is exactly tiktoken's rank BPE: drop them.
void maybe_rank_mode(TokenizerData& d) {
  std::unordered_map<std::string_view, int32_t> ids;
  for (size_t i = 0; i < d.tokens.size(); ++i)
    if (d.types[i] == TokenType::kNormal) ids.emplace(d.tokens[i], int32_t(i));
  int32_t last = -1;
  std::string joined;
  for (const auto& [a, b] : d.merges) {
    joined = a + b;
    const auto it = ids.find(joined);
    if (it == ids.end() || it->second < last) return;
    last = it->second;
  }
  d.merges.clear();
}

}  // namespace

Json read_json_file(const std::filesystem::path& path) {
  const std::string text = read_text_file(path);
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    throw Error(path.string() + ": invalid JSON: " + e.what());
  }
}

TokenizerData hf_tokenizer_json_to_data(const Json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    throw Error(where + ": no \"model\" object");
  const Json& model = j["model"];
  const std::string type = str_or(model, "type", "BPE");
  if (type != "BPE") throw Error(where + ": model type '" + type + "' is not supported (only BPE)");
  const Json null_json;
  const auto get = [&](const Json& o, const char* k) -> const Json& {
    return o.contains(k) ? o[k] : null_json;
  };
  const Json& pre = get(j, "pre_tokenizer");
  const Json& dec = get(j, "decoder");
  const Json& norm = get(j, "normalizer");
  const Json* added = j.contains("added_tokens") ? &j["added_tokens"] : nullptr;
  const bool byte_level = mentions(pre, "\"ByteLevel\"") || mentions(dec, "\"ByteLevel\"");
  const bool spm_style = bool_or(model, "byte_fallback", false) || mentions(pre, "Metaspace") ||
                         mentions(dec, "Metaspace") || mentions(norm, "\xE2\x96\x81");
  if (!model.contains("merges") || !model["merges"].is_array())
    throw Error(where + ": model.merges is not an array");
  const Json& merges = model["merges"];

  TokenizerData d;
  if (byte_level) {
    d.kind = TokenizerKind::kBpe;
    d.pre_tokenizer = read_pre_tokenizer(pre, where);
    read_vocab(d, get(model, "vocab"), added, where,
               [&](const std::string& s) { return unmap_gpt2(s, where + ": vocab"); });
    d.merges.reserve(merges.size());
    for (size_t r = 0; r < merges.size(); ++r) {
      auto [a, b] = merge_pair(merges[r], r, where);
      d.merges.emplace_back(unmap_gpt2(a, where + ": merge"), unmap_gpt2(b, where + ": merge"));
    }
    d.add_dummy_prefix = false;
    d.byte_fallback = false;
    if (bool_or(model, "ignore_merges", false)) maybe_rank_mode(d);
  } else if (spm_style) {
    d.kind = TokenizerKind::kSpm;
    read_vocab(d, get(model, "vocab"), added, where, [](const std::string& s) { return s; });
    d.byte_fallback = bool_or(model, "byte_fallback", false);
    for (size_t i = 0; i < d.tokens.size(); ++i)
      if (d.types[i] == TokenType::kNormal && parse_byte_piece(d.tokens[i]) >= 0)
        d.types[i] = TokenType::kByte;
    // sentencepiece merges by the score of the merged piece: the earlier its first merge
    // rule, the higher. Pieces no rule produces score below all of them.
    d.scores.assign(d.tokens.size(), -1e9f);
    std::unordered_map<std::string_view, int32_t> ids;
    for (size_t i = 0; i < d.tokens.size(); ++i)
      if (d.types[i] == TokenType::kNormal) ids.emplace(d.tokens[i], int32_t(i));
    for (size_t r = 0; r < merges.size(); ++r) {
      auto [a, b] = merge_pair(merges[r], r, where);
      const auto it = ids.find(a + b);
      if (it != ids.end()) d.scores[it->second] = std::max(d.scores[it->second], -float(r));
    }
    d.add_dummy_prefix = mentions(norm, "Prepend") || mentions(pre, "\"prepend_scheme\":\"always\"") ||
                         mentions(pre, "\"prepend_scheme\":\"first\"") ||
                         mentions(pre, "\"add_prefix_space\":true");
    d.remove_extra_whitespaces = false;
  } else {
    throw Error(where + ": neither a byte-level nor a SentencePiece-style BPE tokenizer");
  }
  const std::string unk = str_or(model, "unk_token");
  if (!unk.empty()) {
    d.unk_id = find_token(d, unk);
    if (d.unk_id >= 0 && d.kind == TokenizerKind::kSpm) d.types[d.unk_id] = TokenType::kUnknown;
  }
  read_post_processor(d, get(j, "post_processor"), where);
  if (d.bos_id < 0) d.bos_id = find_first(d, {"<|begin_of_text|>", "<s>", "<bos>"});
  if (d.eos_id < 0) d.eos_id = find_first(d, {"<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>"});
  set_eog_ids(d);
  validate_tokenizer_data(d, where);
  return d;
}

}  // namespace text

TokenizerData load_tokenizer_hf_json(const std::filesystem::path& tokenizer_json) {
  return text::hf_tokenizer_json_to_data(text::read_json_file(tokenizer_json), tokenizer_json.string());
}

TokenizerData load_tokenizer_gpt2_files(const std::filesystem::path& vocab_json,
                                        const std::filesystem::path& merges_txt) {
  const std::string where = vocab_json.string();
  const nlohmann::json vocab = text::read_json_file(vocab_json);
  TokenizerData d;
  d.kind = TokenizerKind::kBpe;
  d.pre_tokenizer = "gpt2";
  d.add_dummy_prefix = false;
  d.byte_fallback = false;
  text::read_vocab(d, vocab, nullptr, where,
                   [&](const std::string& s) { return text::unmap_gpt2(s, where); });
  const std::string merges = read_text_file(merges_txt);
  size_t line_no = 0;
  for (size_t pos = 0; pos < merges.size();) {
    size_t eol = merges.find('\n', pos);
    if (eol == std::string::npos) eol = merges.size();
    std::string line = merges.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    auto [a, b] = text::merge_pair(nlohmann::json(line), line_no, merges_txt.string());
    d.merges.emplace_back(text::unmap_gpt2(a, merges_txt.string()), text::unmap_gpt2(b, merges_txt.string()));
  }
  const int32_t eot = text::find_token(d, "<|endoftext|>");
  if (eot >= 0) {
    d.types[eot] = TokenType::kControl;
    d.bos_id = d.eos_id = eot;
  }
  text::set_eog_ids(d);
  text::validate_tokenizer_data(d, where);
  return d;
}

}  // namespace kmq

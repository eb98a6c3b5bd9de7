// TokenizerData <-> JSON for the .kmq file (layout documented in tokenizer_json.h).
#include "text/tokenizer_json.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "kmq/error.h"
#include "text/text_util.h"
#include "text/tokenizer_internal.h"

namespace kmq {
namespace {

constexpr int kFormatVersion = 1;
using Json = nlohmann::json;

Json bytes_to_json(const std::string& s) {
  if (text::is_valid_utf8(s)) return s;
  return Json{{"b64", text::base64_encode(s)}};
}

std::string bytes_from_json(const Json& j, const std::string& where) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.size() == 1 && j.contains("b64") && j["b64"].is_string()) {
    std::string out;
    if (!text::base64_decode(j["b64"].get_ref<const std::string&>(), out))
      throw Error(where + ": invalid base64");
    return out;
  }
  throw Error(where + ": expected a string or {\"b64\": ...}");
}

Json score_to_json(float f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  return double(f);
}

float score_from_json(const Json& j, const std::string& where) {
  if (j.is_number()) {
    const double v = j.get<double>();
    if (std::isfinite(v) && std::fabs(v) > double(std::numeric_limits<float>::max()))
      throw Error(where + ": score out of float range");
    return float(v);
  }
  if (j.is_string()) {
    const auto& s = j.get_ref<const std::string&>();
    if (s == "nan") return std::numeric_limits<float>::quiet_NaN();
    if (s == "inf") return std::numeric_limits<float>::infinity();
    if (s == "-inf") return -std::numeric_limits<float>::infinity();
  }
  throw Error(where + ": expected a number, \"inf\", \"-inf\" or \"nan\"");
}

const Json& member(const Json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) throw Error(fmt::format("{}: missing \"{}\"", where, key));
  return *it;
}

const Json& array_member(const Json& j, const char* key, const std::string& where) {
  const Json& v = member(j, key, where);
  if (!v.is_array()) throw Error(fmt::format("{}: \"{}\" is not an array", where, key));
  return v;
}

bool bool_member(const Json& j, const char* key, const std::string& where) {
  const Json& v = member(j, key, where);
  if (!v.is_boolean()) throw Error(fmt::format("{}: \"{}\" is not a boolean", where, key));
  return v.get<bool>();
}

std::string string_member(const Json& j, const char* key, const std::string& where) {
  const Json& v = member(j, key, where);
  if (!v.is_string()) throw Error(fmt::format("{}: \"{}\" is not a string", where, key));
  return v.get<std::string>();
}

int64_t int_value(const Json& v, const std::string& what) {
  if (!v.is_number_integer()) throw Error(what + " is not an integer");
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int32_t>::max())) throw Error(what + " out of range");
    return int64_t(u);
  }
  const int64_t s = v.get<int64_t>();
  if (s < std::numeric_limits<int32_t>::min() || s > std::numeric_limits<int32_t>::max())
    throw Error(what + " out of range");
  return s;
}

}  // namespace

nlohmann::json tokenizer_to_json(const TokenizerData& d) {
  Json j;
  j["format_version"] = kFormatVersion;
  j["kind"] = d.kind == TokenizerKind::kSpm ? "spm" : "bpe";
  Json tokens = Json::array();
  for (const auto& t : d.tokens) tokens.push_back(bytes_to_json(t));
  j["tokens"] = std::move(tokens);
  Json scores = Json::array();
  for (float f : d.scores) scores.push_back(score_to_json(f));
  j["scores"] = std::move(scores);
  Json types = Json::array();
  for (TokenType t : d.types) types.push_back(int(t));
  j["types"] = std::move(types);
  Json merges = Json::array();
  for (const auto& [a, b] : d.merges) merges.push_back(Json::array({bytes_to_json(a), bytes_to_json(b)}));
  j["merges"] = std::move(merges);
  j["pre_tokenizer"] = d.pre_tokenizer;
  j["bos_id"] = d.bos_id;
  j["eos_id"] = d.eos_id;
  j["unk_id"] = d.unk_id;
  j["pad_id"] = d.pad_id;
  j["eog_ids"] = d.eog_ids;
  j["add_bos"] = d.add_bos;
  j["add_eos"] = d.add_eos;
  j["add_dummy_prefix"] = d.add_dummy_prefix;
  j["remove_extra_whitespaces"] = d.remove_extra_whitespaces;
  j["byte_fallback"] = d.byte_fallback;
  j["chat_template"] = bytes_to_json(d.chat_template);
  return j;
}

TokenizerData tokenizer_from_json(const nlohmann::json& j, const std::string& where_in) {
  const std::string where = where_in + ": tokenizer";
  if (!j.is_object()) throw Error(where + ": not a JSON object");
  const Json& ver = member(j, "format_version", where);
  if (!ver.is_number_integer() || ver.get<int64_t>() != kFormatVersion)
    throw Error(fmt::format("{}: unsupported format_version {}", where, ver.dump()));
  TokenizerData d;
  const std::string kind = string_member(j, "kind", where);
  if (kind == "spm")
    d.kind = TokenizerKind::kSpm;
  else if (kind == "bpe")
    d.kind = TokenizerKind::kBpe;
  else
    throw Error(fmt::format("{}: unknown kind '{}'", where, kind));

  const Json& tokens = array_member(j, "tokens", where);
  if (tokens.size() > text::kMaxVocab)
    throw Error(fmt::format("{}: {} tokens (limit {})", where, tokens.size(), text::kMaxVocab));
  d.tokens.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i)
    d.tokens.push_back(bytes_from_json(tokens[i], fmt::format("{}: token {}", where, i)));
  const size_t n = d.tokens.size();

  const Json& scores = array_member(j, "scores", where);
  if (!scores.empty() && scores.size() != n)
    throw Error(fmt::format("{}: {} scores for {} tokens", where, scores.size(), n));
  d.scores.reserve(scores.size());
  for (size_t i = 0; i < scores.size(); ++i)
    d.scores.push_back(score_from_json(scores[i], fmt::format("{}: score {}", where, i)));

  const Json& types = array_member(j, "types", where);
  if (!types.empty() && types.size() != n)
    throw Error(fmt::format("{}: {} types for {} tokens", where, types.size(), n));
  d.types.reserve(types.size());
  for (size_t i = 0; i < types.size(); ++i) {
    const int64_t t = int_value(types[i], fmt::format("{}: type {}", where, i));
    if (t < int(TokenType::kNormal) || t > int(TokenType::kByte))
      throw Error(fmt::format("{}: token {} has invalid type {}", where, i, t));
    d.types.push_back(TokenType(t));
  }

  const Json& merges = array_member(j, "merges", where);
  if (merges.size() > 4 * text::kMaxVocab) throw Error(fmt::format("{}: {} merges", where, merges.size()));
  d.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string w = fmt::format("{}: merge {}", where, i);
    if (!merges[i].is_array() || merges[i].size() != 2) throw Error(w + ": not a pair");
    d.merges.emplace_back(bytes_from_json(merges[i][0], w), bytes_from_json(merges[i][1], w));
  }

  d.pre_tokenizer = string_member(j, "pre_tokenizer", where);
  d.bos_id = int32_t(int_value(member(j, "bos_id", where), where + ": bos_id"));
  d.eos_id = int32_t(int_value(member(j, "eos_id", where), where + ": eos_id"));
  d.unk_id = int32_t(int_value(member(j, "unk_id", where), where + ": unk_id"));
  d.pad_id = int32_t(int_value(member(j, "pad_id", where), where + ": pad_id"));
  const Json& eog = array_member(j, "eog_ids", where);
  if (eog.size() > n) throw Error(where + ": more eog ids than tokens");
  for (size_t i = 0; i < eog.size(); ++i)
    d.eog_ids.push_back(int32_t(int_value(eog[i], fmt::format("{}: eog id {}", where, i))));
  d.add_bos = bool_member(j, "add_bos", where);
  d.add_eos = bool_member(j, "add_eos", where);
  d.add_dummy_prefix = bool_member(j, "add_dummy_prefix", where);
  d.remove_extra_whitespaces = bool_member(j, "remove_extra_whitespaces", where);
  d.byte_fallback = bool_member(j, "byte_fallback", where);
  d.chat_template = bytes_from_json(member(j, "chat_template", where), where + ": chat_template");
  text::validate_tokenizer_data(d, where);
  return d;
}

}  // namespace kmq

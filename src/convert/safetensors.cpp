// safetensors reader: header parsing with every offset and size checked (overflow-safe)
// against the file before any tensor byte is touched; sharded sets via the index JSON.
#include "convert/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "kmq/error.h"
#include "util/half.h"

namespace kmq {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

using nlohmann::json;

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

std::string shape_str(const std::vector<int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

// Known safetensors dtypes we do not convert, so the message can say "unsupported"
// rather than "unknown".
bool known_unsupported_dtype(std::string_view d) {
  static constexpr std::string_view kOthers[] = {"F64", "I64", "I32", "I16", "I8", "U64", "U32",
                                                 "U16", "BOOL", "F8_E4M3", "F8_E5M2",
                                                 "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"};
  return std::find(std::begin(kOthers), std::end(kOthers), d) != std::end(kOthers);
}

SafetensorsInfo parse_entry(const std::string& where, const std::string& name, const json& e,
                            uint64_t data_size) {
  auto fail = [&](const std::string& what) {
    throw Error(fmt::format("{}: tensor '{}': {}", where, name, what));
  };
  if (!e.is_object()) fail("header entry is not a JSON object");
  SafetensorsInfo t;
  t.name = name;

  auto d = e.find("dtype");
  if (d == e.end() || !d->is_string()) fail("missing or non-string \"dtype\"");
  const auto& ds = d->get_ref<const std::string&>();
  if (ds == "F32") {
    t.dtype = DType::kF32;
  } else if (ds == "F16") {
    t.dtype = DType::kF16;
  } else if (ds == "BF16") {
    t.dtype = DType::kBF16;
  } else if (ds == "U8") {
    t.u8 = true;
  } else {
    fail(fmt::format("{} dtype '{}' (supported: F32, F16, BF16, U8)",
                     known_unsupported_dtype(ds) ? "unsupported" : "unknown", ds));
  }

  auto s = e.find("shape");
  if (s == e.end() || !s->is_array()) fail("missing or non-array \"shape\"");
  if (s->size() > 8) fail(fmt::format("shape has {} dimensions (at most 8 supported)", s->size()));
  uint64_t n = 1;
  for (const auto& v : *s) {
    if (!v.is_number_unsigned()) fail(fmt::format("shape {} has a non-integer or negative dimension", s->dump()));
    uint64_t dim = v.get<uint64_t>();
    if (dim > uint64_t(kSafetensorsMaxDim)) fail(fmt::format("shape {}: dimension too large", s->dump()));
    t.shape.push_back(int64_t(dim));
    if (mul_overflows(n, dim, &n)) fail(fmt::format("shape {}: element count overflows", s->dump()));
  }
  uint64_t nbytes = 0;
  if (mul_overflows(n, t.u8 ? 1 : dtype_size(t.dtype), &nbytes))
    fail(fmt::format("shape {}: byte size overflows", s->dump()));

  auto o = e.find("data_offsets");
  if (o == e.end() || !o->is_array() || o->size() != 2 || !(*o)[0].is_number_unsigned() ||
      !(*o)[1].is_number_unsigned())
    fail("\"data_offsets\" must be two non-negative integers [begin, end]");
  t.begin = (*o)[0].get<uint64_t>();
  t.end = (*o)[1].get<uint64_t>();
  if (t.begin > t.end) fail(fmt::format("data_offsets [{}, {}]: begin is past end", t.begin, t.end));
  if (t.end > data_size)
    fail(fmt::format("data_offsets [{}, {}] past the end of the data section ({} bytes)", t.begin,
                     t.end, data_size));
  if (t.end - t.begin != nbytes)
    fail(fmt::format("data_offsets [{}, {}] hold {} bytes but {} {} needs {} (size mismatch)", t.begin,
                     t.end, t.end - t.begin, ds, shape_str(t.shape), nbytes));
  return t;
}

}  // namespace

uint64_t SafetensorsInfo::n_elements() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= uint64_t(d);  // validated at open: cannot overflow
  return n;
}

std::string_view safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    default: return "?";
  }
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : file_(path) {
  const std::string& where = file_.path();
  const uint64_t size = file_.size();
  if (size < 8)
    throw Error(fmt::format("{}: truncated safetensors file ({} bytes, no 8-byte header length)", where, size));
  uint64_t n = 0;
  std::memcpy(&n, file_.data(), 8);
  if (n > kSafetensorsMaxHeader)
    throw Error(fmt::format("{}: header length {} exceeds the {} byte limit (corrupt or not safetensors)",
                            where, n, kSafetensorsMaxHeader));
  if (n > size - 8)
    throw Error(fmt::format("{}: header length {} runs past the end of the file ({} bytes): truncated?",
                            where, n, size));
  data_start_ = 8 + n;
  const uint64_t data_size = size - data_start_;

  const char* h = reinterpret_cast<const char*>(file_.data() + 8);
  json header;
  try {
    header = json::parse(h, h + n);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: header is not valid JSON: {}", where, e.what()));
  }
  if (!header.is_object()) throw Error(where + ": header is not a JSON object");

  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    tensors_.push_back(parse_entry(where, name, e, data_size));
  }

  // No two tensors may share bytes.
  std::vector<const SafetensorsInfo*> by_offset;
  for (const auto& t : tensors_)
    if (t.end > t.begin) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorsInfo* a, const SafetensorsInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto* a = by_offset[i - 1];
    const auto* b = by_offset[i];
    if (b->begin < a->end)
      throw Error(fmt::format("{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", where, a->name,
                              a->begin, a->end, b->name, b->begin, b->end));
  }
  // nlohmann's object is ordered by key, so tensors_ is sorted by name.
}

const SafetensorsInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const SafetensorsInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

std::span<const uint8_t> SafetensorsFile::bytes(const SafetensorsInfo& t) const {
  return {file_.data() + data_start_ + t.begin, size_t(t.end - t.begin)};
}

std::vector<float> SafetensorsFile::load_f32(const SafetensorsInfo& t) const {
  auto b = bytes(t);
  const size_t n = size_t(t.n_elements());
  std::vector<float> out(n);
  if (t.u8) {
    for (size_t i = 0; i < n; ++i) out[i] = float(b[i]);
    return out;
  }
  switch (t.dtype) {
    case DType::kF32:
      if (n) std::memcpy(out.data(), b.data(), n * 4);
      break;
    case DType::kF16:
    case DType::kBF16: {
      const bool bf = t.dtype == DType::kBF16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, b.data() + 2 * i, 2);  // data need not be 2-byte aligned
        out[i] = bf ? bf16_to_f32(v) : f16_to_f32(v);
      }
      break;
    }
    default:
      throw Error(fmt::format("{}: tensor '{}': cannot convert dtype", path(), t.name));
  }
  return out;
}

// ---------------------------------------------------------------------------------------

SafetensorsSet::SafetensorsSet(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  const fs::path index = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";
  if (!fs::exists(index)) {
    if (!fs::exists(single))
      throw Error(fmt::format("{}: no model.safetensors or model.safetensors.index.json", dir.string()));
    source_ = single;
    add_file(std::make_shared<const SafetensorsFile>(single));
    return;
  }

  source_ = index;
  sharded_ = true;
  const std::string where = index.string();
  json j;
  try {
    j = json::parse(read_text_file(index));
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", where, e.what()));
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(where + ": missing \"weight_map\" object");
  const json& wm = j["weight_map"];
  if (wm.empty()) throw Error(where + ": \"weight_map\" is empty");

  // Shard names in first-seen order, checked to be plain file names in `dir`.
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (const auto& [name, v] : wm.items()) {
    if (!v.is_string()) throw Error(fmt::format("{}: weight_map entry '{}' is not a string", where, name));
    const auto& s = v.get_ref<const std::string&>();
    if (s.empty() || s == "." || s == ".." || s.find('/') != std::string::npos ||
        s.find('\\') != std::string::npos)
      throw Error(fmt::format("{}: tensor '{}': shard name '{}' is not a plain file name", where, name, s));
    if (seen.insert(s).second) {
      if (!fs::exists(dir / s))
        throw Error(fmt::format("{}: shard '{}' (holding tensor '{}') not found: missing file {}", where,
                                s, name, (dir / s).string()));
      shards.push_back(s);
    }
  }
  std::sort(shards.begin(), shards.end());
  for (const auto& s : shards) add_file(std::make_shared<const SafetensorsFile>(dir / s));

  for (const auto& [name, v] : wm.items()) {
    const auto& s = v.get_ref<const std::string&>();
    const Entry* e = find(name);
    if (!e || fs::path(e->file->path()).filename() != s)
      throw Error(fmt::format("{}: tensor '{}' is mapped to shard '{}' but is not in that file", where,
                              name, s));
  }
}

void SafetensorsSet::add_file(std::shared_ptr<const SafetensorsFile> f) {
  for (const auto& t : f->tensors()) {
    auto [it, inserted] = entries_.try_emplace(t.name, Entry{f, &t});
    if (!inserted)
      throw Error(fmt::format("tensor '{}' appears in both {} and {}", t.name, it->second.file->path(),
                              f->path()));
  }
  files_.push_back(std::move(f));
}

const SafetensorsSet::Entry* SafetensorsSet::find(std::string_view name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

}  // namespace kmq

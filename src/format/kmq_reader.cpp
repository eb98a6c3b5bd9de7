// KmqFile: maps a .kmq file and validates the header, the metadata and every directory
// entry with overflow-safe arithmetic before any pointer into the file is handed out.
#include <algorithm>
#include <cstring>
#include <fmt/format.h>
#include <iterator>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "format/layout.h"
#include "format/metadata.h"
#include "kmq/error.h"
#include "kmq/kmq_file.h"
#include "text/tokenizer_json.h"
#include "util/crc32c.h"
#include "util/mmap_file.h"

namespace kmq {

using format::DirEntry;
using format::FileHeader;

namespace {

// a + b <= limit without overflow
bool fits(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }

bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

double TensorRef::bits_per_weight() const {
  const double n = double(rows) * double(cols);
  if (dtype != DType::kKmq) return 8.0 * double(dtype_size(dtype));
  return n > 0 ? 8.0 * double(file_size) / n : 0.0;
}

struct KmqFile::Impl {
  MappedFile map;
  FileHeader header{};
  ModelConfig config;
  TokenizerData tokenizer;
  std::string meta_text;
  std::vector<TensorRef> tensors;
  std::unordered_map<std::string, size_t> by_name;
};

KmqFile::KmqFile(const std::filesystem::path& path) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  const std::string p = path.string();
  if (!std::filesystem::exists(path)) throw Error(p + ": no such file");
  m.map = MappedFile(path);
  const uint64_t fsize = m.map.size();
  const uint8_t* base = m.map.data();
  auto fail = [&](const std::string& what) { throw Error(p + ": " + what); };

  if (fsize < format::kAlign)
    fail(fmt::format("too small to be a .kmq file ({} bytes; the header alone is {})", fsize, format::kAlign));
  std::memcpy(&m.header, base, sizeof(FileHeader));
  const FileHeader& h = m.header;
  if (std::memcmp(h.magic, format::kMagic, 8) != 0) fail("not a .kmq file (bad magic)");
  if (h.version != format::kVersion)
    fail(fmt::format("unsupported .kmq version {} (this build reads version {})", h.version, format::kVersion));
  FileHeader tmp = h;
  tmp.header_crc = 0;
  if (crc32c(&tmp, sizeof tmp) != h.header_crc) fail("header checksum mismatch: the header is corrupted");
  if (h.header_size != sizeof(FileHeader) || h.alignment != format::kAlign)
    fail(fmt::format("bad header size {} or alignment {}", h.header_size, h.alignment));
  if (h.file_size != fsize)
    fail(fmt::format("truncated or extended: the header says {} bytes, the file has {}", h.file_size, fsize));
  if (h.data_offset != format::kAlign || !fits(h.data_offset, h.data_size, fsize))
    fail(fmt::format("tensor data region [{}, +{}) lies outside the file ({} bytes)", h.data_offset, h.data_size, fsize));
  if (h.meta_offset < h.data_offset + h.data_size || !fits(h.meta_offset, h.meta_size, fsize))
    fail(fmt::format("metadata region [{}, +{}) lies outside the file or overlaps the data", h.meta_offset, h.meta_size));
  if (h.meta_size > format::kMaxMetaSize) fail(fmt::format("metadata of {} bytes is too large", h.meta_size));
  uint64_t dir_bytes = 0;
  if (h.dir_count > format::kMaxTensors || !mul_ok(h.dir_count, sizeof(DirEntry), &dir_bytes) ||
      h.dir_offset < h.meta_offset + h.meta_size || !fits(h.dir_offset, dir_bytes, fsize))
    fail(fmt::format("tensor directory ({} entries at offset {}) lies outside the file", h.dir_count, h.dir_offset));
  // No checksum covers the padding between the sections, so it must be what the writer
  // wrote: fewer than kAlign zero bytes, and the metadata right after the tensor data.
  if (h.meta_offset != h.data_offset + h.data_size)
    fail(fmt::format("metadata at offset {} does not follow the tensor data (which ends at {})", h.meta_offset,
                     h.data_offset + h.data_size));
  auto check_padding = [&](uint64_t from, uint64_t to, const char* after) {
    if (to - from >= format::kAlign)
      fail(fmt::format("{} bytes of padding after the {} (at most {})", to - from, after, format::kAlign - 1));
    for (uint64_t i = from; i < to; ++i)
      if (base[i] != 0) fail(fmt::format("nonzero byte at offset {} in the padding after the {}", i, after));
  };
  if (!std::all_of(std::begin(h.reserved), std::end(h.reserved), [](uint8_t b) { return b == 0; }))
    fail("reserved header bytes are not zero");
  check_padding(sizeof(FileHeader), h.data_offset, "header");
  check_padding(h.meta_offset + h.meta_size, h.dir_offset, "metadata");
  check_padding(h.dir_offset + dir_bytes, fsize, "directory");

  // Metadata.
  const uint8_t* meta = base + h.meta_offset;
  if (crc32c(meta, h.meta_size) != h.meta_crc) fail("metadata checksum mismatch: the metadata is corrupted");
  m.meta_text.assign(reinterpret_cast<const char*>(meta), h.meta_size);
  auto j = nlohmann::json::parse(m.meta_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) fail("metadata is not a JSON object");
  if (!j.contains("config")) fail("metadata has no 'config'");
  if (!j.contains("tokenizer")) fail("metadata has no 'tokenizer'");
  m.config = config_from_json_object(j["config"], p);
  m.tokenizer = tokenizer_from_json(j["tokenizer"], p);

  // Directory.
  const uint8_t* dir = base + h.dir_offset;
  if (crc32c(dir, dir_bytes) != h.dir_crc) fail("tensor directory checksum mismatch: the directory is corrupted");
  const uint8_t* data = base + h.data_offset;
  std::vector<std::pair<uint64_t, uint64_t>> regions;
  m.tensors.reserve(h.dir_count);
  for (uint64_t i = 0; i < h.dir_count; ++i) {
    DirEntry e;
    std::memcpy(&e, dir + i * sizeof(DirEntry), sizeof e);
    if (e.name[0] == 0 || std::memchr(e.name, 0, format::kNameLen) == nullptr)
      fail(fmt::format("directory entry {}: bad tensor name", i));
    TensorRef t;
    t.name = e.name;
    auto tfail = [&](const std::string& what) { fail(fmt::format("tensor '{}': {}", t.name, what)); };
    if (m.by_name.count(t.name)) tfail("appears twice in the directory");
    // Bytes the reader does not otherwise look at are zero (the writer zeroes them).
    auto all_zero = [](const void* p, size_t n) {
      const auto* b = static_cast<const uint8_t*>(p);
      return std::all_of(b, b + n, [](uint8_t x) { return x == 0; });
    };
    if (!all_zero(e.name + t.name.size(), format::kNameLen - t.name.size()) || !all_zero(e.reserved0, sizeof e.reserved0) ||
        !all_zero(e.reserved, sizeof e.reserved))
      tfail("nonzero bytes in the name padding or the reserved fields");
    if (e.dtype > uint8_t(DType::kKmq)) tfail(fmt::format("unknown dtype {}", e.dtype));
    t.dtype = DType(e.dtype);
    if (e.dtype != uint8_t(DType::kKmq) &&
        (e.bits || e.scope || e.codebook_dtype || e.scale_dtype || e.group_size || e.scale_block ||
         !all_zero(e.part_offset + 1, 2 * sizeof(uint64_t)) || !all_zero(e.part_size + 1, 2 * sizeof(uint64_t))))
      tfail("a float tensor with quantization fields set");
    if (e.ndim != 1 && e.ndim != 2) tfail(fmt::format("unsupported number of dimensions {}", e.ndim));
    t.ndim = e.ndim;
    if (e.shape[0] <= 0 || e.shape[1] <= 0 || e.shape[0] > (int64_t(1) << 40) || e.shape[1] > (int64_t(1) << 40) ||
        (e.ndim == 1 && e.shape[1] != 1))
      tfail(fmt::format("bad shape [{}, {}]", e.shape[0], e.shape[1]));
    t.rows = e.shape[0];
    t.cols = e.shape[1];
    uint64_t numel = 0;
    if (!mul_ok(uint64_t(t.rows), uint64_t(t.cols), &numel) || numel > (uint64_t(1) << 40))
      tfail("too many elements");
    if (e.offset % format::kAlign != 0) tfail(fmt::format("offset {} is not aligned to {}", e.offset, format::kAlign));
    if (!fits(e.offset, e.size, h.data_size))
      tfail(fmt::format("region [{}, +{}) extends past the end of the data ({} bytes)", e.offset, e.size, h.data_size));
    // Expected part sizes.
    uint64_t expect[3] = {0, 0, 0};
    if (t.dtype != DType::kKmq) {
      if (!mul_ok(numel, dtype_size(t.dtype), &expect[0])) tfail("size overflows");
    } else {
      if (e.bits < 1 || e.bits > 4) tfail(fmt::format("bits {} not in 1..4", e.bits));
      if (e.scope > uint8_t(CodebookScope::kGroup)) tfail(fmt::format("unknown codebook scope {}", e.scope));
      if (e.codebook_dtype != uint8_t(DType::kF32) && e.codebook_dtype != uint8_t(DType::kF16))
        tfail(fmt::format("codebook dtype {} not f32/f16", e.codebook_dtype));
      if (e.scale_dtype != uint8_t(DType::kF16) && e.scale_dtype != uint8_t(DType::kBF16))
        tfail(fmt::format("scale dtype {} not f16/bf16", e.scale_dtype));
      if (e.ndim != 2) tfail("a quantized tensor must be a matrix");
      t.bits = e.bits;
      t.scope = CodebookScope(e.scope);
      t.codebook_dtype = DType(e.codebook_dtype);
      t.scale_dtype = DType(e.scale_dtype);
      t.group_size = e.group_size;
      t.scale_block = e.scale_block;
      if (t.scope == CodebookScope::kGroup ? (e.group_size < 1 || e.group_size > t.cols) : e.group_size != 0)
        tfail(fmt::format("bad group size {}", e.group_size));
      if (e.scale_block < 0 || e.scale_block > t.cols) tfail(fmt::format("bad scale block {}", e.scale_block));
      const uint64_t row_bytes = (uint64_t(t.cols) * t.bits + 7) / 8;
      uint64_t n_cb = t.scope == CodebookScope::kTensor ? 1
                      : t.scope == CodebookScope::kRow
                          ? uint64_t(t.rows)
                          : uint64_t(t.rows) * ((uint64_t(t.cols) + t.group_size - 1) / t.group_size);
      const uint64_t n_sb = t.scale_block ? (uint64_t(t.cols) + t.scale_block - 1) / t.scale_block : 0;
      if (!mul_ok(uint64_t(t.rows), row_bytes, &expect[0]) ||
          !mul_ok(n_cb, (uint64_t(1) << t.bits) * dtype_size(t.codebook_dtype), &expect[1]) ||
          !mul_ok(uint64_t(t.rows) * n_sb, dtype_size(t.scale_dtype), &expect[2]))
        tfail("size overflows");
    }
    const int n_parts = t.dtype == DType::kKmq ? 3 : 1;
    const void* part_ptr[3] = {nullptr, nullptr, nullptr};
    for (int k = 0; k < n_parts; ++k) {
      if (e.part_size[k] != expect[k])
        tfail(fmt::format("part {} has {} bytes, its shape needs {}", k, e.part_size[k], expect[k]));
      if (e.part_offset[k] < e.offset || !fits(e.part_offset[k], e.part_size[k], e.offset + e.size))
        tfail(fmt::format("part {} [{}, +{}) lies outside the tensor's region", k, e.part_offset[k], e.part_size[k]));
      if (e.part_offset[k] % format::kPartAlign != 0 && e.part_size[k] != 0)
        tfail(fmt::format("part {} offset {} is not {}-byte aligned", k, e.part_offset[k], format::kPartAlign));
      part_ptr[k] = data + e.part_offset[k];
    }
    t.data = part_ptr[0];
    t.codebooks = part_ptr[1];
    t.scales = t.scale_block ? part_ptr[2] : nullptr;
    t.file_offset = h.data_offset + e.offset;
    t.file_size = e.size;
    t.crc = e.crc;
    regions.emplace_back(e.offset, e.size);
    m.by_name[t.name] = m.tensors.size();
    m.tensors.push_back(std::move(t));
  }
  std::vector<size_t> order(regions.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return regions[a].first < regions[b].first; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = regions[order[i - 1]];
    if (prev.first + prev.second > regions[order[i]].first)
      fail(fmt::format("tensors '{}' and '{}' overlap", m.tensors[order[i - 1]].name, m.tensors[order[i]].name));
  }
}

KmqFile::~KmqFile() = default;
KmqFile::KmqFile(KmqFile&&) noexcept = default;
KmqFile& KmqFile::operator=(KmqFile&&) noexcept = default;

const std::string& KmqFile::path() const { return impl_->map.path(); }
uint32_t KmqFile::version() const { return impl_->header.version; }
uint64_t KmqFile::file_size() const { return impl_->map.size(); }
const ModelConfig& KmqFile::config() const { return impl_->config; }
const TokenizerData& KmqFile::tokenizer() const { return impl_->tokenizer; }
const std::string& KmqFile::metadata_json() const { return impl_->meta_text; }
const std::vector<TensorRef>& KmqFile::tensors() const { return impl_->tensors; }

const TensorRef* KmqFile::find(const std::string& name) const {
  auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

const TensorRef& KmqFile::get(const std::string& name) const {
  const TensorRef* t = find(name);
  if (!t) throw Error(fmt::format("{}: tensor '{}' is missing", path(), name));
  return *t;
}

std::vector<std::string> KmqFile::verify() const {
  // A tensor is bad when its CRC fails or when the padding after its region (up to the
  // next region or the end of the data; before the first region: the first tensor's) is
  // not zero: no checksum covers the padding, and every payload byte must be checked.
  const auto& m = *impl_;
  const uint8_t* base = m.map.data();
  const size_t n = m.tensors.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return m.tensors[a].file_offset < m.tensors[b].file_offset; });
  auto zero = [&](uint64_t from, uint64_t to) {
    return std::all_of(base + from, base + to, [](uint8_t x) { return x == 0; });
  };
  std::vector<bool> bad(n, false);
  const uint64_t data_end = m.header.data_offset + m.header.data_size;
  for (size_t k = 0; k < n; ++k) {
    const TensorRef& t = m.tensors[order[k]];
    const uint64_t end = t.file_offset + t.file_size;
    const uint64_t next = k + 1 < n ? m.tensors[order[k + 1]].file_offset : data_end;
    bad[order[k]] = crc32c(base + t.file_offset, t.file_size) != t.crc || !zero(end, next) ||
                    (k == 0 && !zero(m.header.data_offset, t.file_offset));
  }
  std::vector<std::string> names;
  for (size_t i = 0; i < n; ++i)
    if (bad[i]) names.push_back(m.tensors[i].name);
  return names;
}

}  // namespace kmq

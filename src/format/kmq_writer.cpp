// KmqWriter: streams tensor payloads to a temporary file, then appends metadata and the
// directory, rewrites the header, syncs and renames. Nothing half-written is ever left
// under the final name.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "format/layout.h"
#include "format/metadata.h"
#include "kmq/error.h"
#include "kmq/kmq_file.h"
#include "text/tokenizer_json.h"
#include "util/crc32c.h"
#include "util/half.h"

namespace kmq {

using format::DirEntry;
using format::FileHeader;

struct KmqWriter::Impl {
  std::filesystem::path path, tmp;
  std::FILE* f = nullptr;
  uint64_t pos = 0;
  ModelConfig config;
  TokenizerData tokenizer;
  std::string notes = "{}";
  std::vector<DirEntry> dir;
  bool finished = false;

  void fail_io(const std::string& what) {
    throw Error(fmt::format("{}: {}: {}", tmp.string(), what, std::strerror(errno)));
  }
  void write(const void* p, size_t n, uint32_t* crc) {
    if (n && std::fwrite(p, 1, n, f) != n) fail_io("write failed");
    if (crc) *crc = crc32c(p, n, *crc);
    pos += n;
  }
  void pad_to(uint64_t align, uint32_t* crc) {
    static const uint8_t kZeros[format::kAlign] = {};
    uint64_t n = (align - pos % align) % align;
    write(kZeros, n, crc);
  }
  DirEntry& new_entry(const std::string& name) {
    if (name.empty() || name.size() >= format::kNameLen)
      throw Error(fmt::format("{}: tensor name '{}' must be 1..{} bytes", path.string(), name, format::kNameLen - 1));
    for (const auto& e : dir)
      if (name == e.name) throw Error(fmt::format("{}: duplicate tensor '{}'", path.string(), name));
    pad_to(format::kAlign, nullptr);
    DirEntry e{};
    std::memcpy(e.name, name.data(), name.size());
    e.offset = pos - format::kAlign;  // relative to data_offset = kAlign
    dir.push_back(e);
    return dir.back();
  }
};

KmqWriter::KmqWriter(const std::filesystem::path& path, ModelConfig config, TokenizerData tokenizer)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.path = path;
  m.tmp = path;
  m.tmp += fmt::format(".tmp-{}", ::getpid());
  m.config = std::move(config);
  m.tokenizer = std::move(tokenizer);
  validate_config(m.config, path.string());
  m.f = std::fopen(m.tmp.c_str(), "wb");
  if (!m.f) throw Error(fmt::format("{}: cannot create: {}", m.tmp.string(), std::strerror(errno)));
  uint8_t zeros[format::kAlign] = {};
  m.write(zeros, sizeof zeros, nullptr);  // the header is written last, by finish()
}

KmqWriter::~KmqWriter() {
  if (impl_ && !impl_->finished) {
    if (impl_->f) std::fclose(impl_->f);
    std::error_code ec;
    std::filesystem::remove(impl_->tmp, ec);
  }
}

const std::filesystem::path& KmqWriter::temp_path() const { return impl_->tmp; }

void KmqWriter::set_notes_json(const std::string& json_object) { impl_->notes = json_object; }

void KmqWriter::add_float(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                          const float* values) {
  auto& m = *impl_;
  if (shape.empty() || shape.size() > 2) throw Error(fmt::format("{}: tensor '{}' must have 1 or 2 dims", m.path.string(), name));
  if (dtype == DType::kKmq) throw Error("add_float: dtype must be f32, f16 or bf16");
  DirEntry& e = m.new_entry(name);
  e.dtype = uint8_t(dtype);
  e.ndim = uint8_t(shape.size());
  e.shape[0] = shape[0];
  e.shape[1] = shape.size() == 2 ? shape[1] : 1;
  const int64_t n = e.shape[0] * e.shape[1];
  uint32_t crc = 0;
  const uint64_t start = m.pos;
  constexpr int64_t kChunk = 1 << 16;
  std::vector<uint16_t> half(kChunk);
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t c = std::min(kChunk, n - i);
    if (dtype == DType::kF32) {
      m.write(values + i, size_t(c) * 4, &crc);
    } else {
      for (int64_t k = 0; k < c; ++k)
        half[k] = dtype == DType::kF16 ? f32_to_f16(values[i + k]) : f32_to_bf16(values[i + k]);
      m.write(half.data(), size_t(c) * 2, &crc);
    }
  }
  e.part_offset[0] = start - format::kAlign;
  e.part_size[0] = m.pos - start;
  e.size = m.pos - start;
  e.crc = crc;
}

void KmqWriter::add_quantized(const std::string& name, const QuantizedTensor& q) {
  auto& m = *impl_;
  if (q.bits < 1 || q.bits > 4) throw Error(fmt::format("tensor '{}': bits {} not in 1..4", name, q.bits));
  if (int64_t(q.indices.size()) != q.rows * q.row_bytes() ||
      int64_t(q.codebooks.size()) != q.n_codebooks() * (int64_t(1) << q.bits) ||
      int64_t(q.scales.size()) != q.rows * q.n_scale_blocks())
    throw Error(fmt::format("tensor '{}': quantized tensor parts have inconsistent sizes", name));
  DirEntry& e = m.new_entry(name);
  e.dtype = uint8_t(DType::kKmq);
  e.bits = uint8_t(q.bits);
  e.scope = uint8_t(q.scope);
  e.codebook_dtype = uint8_t(q.codebook_dtype);
  e.scale_dtype = uint8_t(q.scale_dtype);
  e.ndim = 2;
  e.shape[0] = q.rows;
  e.shape[1] = q.cols;
  e.group_size = q.scope == CodebookScope::kGroup ? q.group_size : 0;
  e.scale_block = q.scale_block;
  uint32_t crc = 0;
  const uint64_t start = m.pos;
  auto part = [&](int i, const void* p, size_t n) {
    m.pad_to(format::kPartAlign, &crc);
    e.part_offset[i] = m.pos - format::kAlign;
    m.write(p, n, &crc);
    e.part_size[i] = n;
  };
  auto to_dtype = [](const std::vector<float>& v, DType t) {
    std::vector<uint8_t> out(v.size() * dtype_size(t));
    for (size_t i = 0; i < v.size(); ++i) {
      if (t == DType::kF32) {
        std::memcpy(&out[i * 4], &v[i], 4);
      } else {
        uint16_t h = t == DType::kF16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
        std::memcpy(&out[i * 2], &h, 2);
      }
    }
    return out;
  };
  part(0, q.indices.data(), q.indices.size());
  auto cb = to_dtype(q.codebooks, q.codebook_dtype);
  part(1, cb.data(), cb.size());
  auto sc = to_dtype(q.scales, q.scale_dtype);
  part(2, sc.data(), sc.size());
  if (sc.empty()) e.part_offset[2] = e.part_offset[1] + e.part_size[1];
  e.size = m.pos - start;
  e.crc = crc;
}

void KmqWriter::finish() {
  auto& m = *impl_;
  m.pad_to(format::kAlign, nullptr);
  FileHeader h{};
  std::memcpy(h.magic, format::kMagic, 8);
  h.version = format::kVersion;
  h.header_size = sizeof(FileHeader);
  h.alignment = format::kAlign;
  h.data_offset = format::kAlign;
  h.data_size = m.pos - format::kAlign;

  nlohmann::json meta;
  meta["format"] = "kmq";
  meta["config"] = config_to_json_object(m.config);
  meta["tokenizer"] = tokenizer_to_json(m.tokenizer);
  auto notes = nlohmann::json::parse(m.notes, nullptr, false);
  meta["notes"] = notes.is_discarded() ? nlohmann::json::object() : notes;
  const std::string text = meta.dump();
  h.meta_offset = m.pos;
  h.meta_size = text.size();
  h.meta_crc = crc32c(text.data(), text.size());
  m.write(text.data(), text.size(), nullptr);
  m.pad_to(format::kAlign, nullptr);

  h.dir_offset = m.pos;
  h.dir_count = m.dir.size();
  h.dir_crc = crc32c(m.dir.data(), m.dir.size() * sizeof(DirEntry));
  m.write(m.dir.data(), m.dir.size() * sizeof(DirEntry), nullptr);
  m.pad_to(format::kAlign, nullptr);
  h.file_size = m.pos;
  h.header_crc = crc32c(&h, sizeof h);

  if (std::fseek(m.f, 0, SEEK_SET) != 0) m.fail_io("seek failed");
  if (std::fwrite(&h, 1, sizeof h, m.f) != sizeof h) m.fail_io("write failed");
  if (std::fflush(m.f) != 0) m.fail_io("flush failed");
  if (::fsync(::fileno(m.f)) != 0) m.fail_io("fsync failed");
  if (std::fclose(m.f) != 0) {
    m.f = nullptr;
    m.fail_io("close failed");
  }
  m.f = nullptr;
  std::error_code ec;
  std::filesystem::rename(m.tmp, m.path, ec);
  if (ec) throw Error(fmt::format("{}: cannot rename to {}: {}", m.tmp.string(), m.path.string(), ec.message()));
  m.finished = true;
}

}  // namespace kmq

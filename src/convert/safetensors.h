// safetensors reader: one mmapped file whose header is validated in full before use, or
// a sharded set named by model.safetensors.index.json. Tensors load as row-major float32.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kmq/types.h"
#include "util/mmap_file.h"

namespace kmq {

// Layout of a safetensors file:
//   [0, 8)            uint64 little-endian N: length of the JSON header
//   [8, 8 + N)        JSON object {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
//                     "__metadata__": {...} (ignored)}, often space-padded
//   [8 + N, size)     data section; offsets are relative to its start
inline constexpr uint64_t kSafetensorsMaxHeader = uint64_t(100) << 20;  // 100 MiB
inline constexpr int64_t kSafetensorsMaxDim = int64_t(1) << 48;

struct SafetensorsInfo {
  std::string name;
  DType dtype = DType::kF32;      // F32, F16 or BF16 (others are rejected at open)
  bool u8 = false;                // "U8" (packed indices of imported quantized checkpoints):
                                  // dtype is then meaningless; read bytes(), or load_f32 (0..255)
  std::vector<int64_t> shape;     // as stored; [] is a scalar
  uint64_t begin = 0, end = 0;    // byte range within the data section
  uint64_t n_elements() const;
};

class SafetensorsFile {
 public:
  // Maps the file and validates the header and every tensor's range; throws kmq::Error
  // naming the file (and the tensor) on any inconsistency.
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::string& path() const { return file_.path(); }
  // Sorted by name.
  const std::vector<SafetensorsInfo>& tensors() const { return tensors_; }
  const SafetensorsInfo* find(std::string_view name) const;
  std::span<const uint8_t> bytes(const SafetensorsInfo& t) const;
  std::vector<float> load_f32(const SafetensorsInfo& t) const;

 private:
  MappedFile file_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsInfo> tensors_;
};

// The weights of a Hugging Face directory: model.safetensors.index.json and the shards it
// names, else model.safetensors. Tensor names are unique across shards.
class SafetensorsSet {
 public:
  struct Entry {
    std::shared_ptr<const SafetensorsFile> file;
    const SafetensorsInfo* info = nullptr;
  };

  explicit SafetensorsSet(const std::filesystem::path& dir);

  const std::map<std::string, Entry, std::less<>>& entries() const { return entries_; }
  const Entry* find(std::string_view name) const;
  size_t n_files() const { return files_.size(); }
  bool sharded() const { return sharded_; }
  // The file the weights are described by (the index, or model.safetensors).
  const std::filesystem::path& source() const { return source_; }

 private:
  void add_file(std::shared_ptr<const SafetensorsFile> f);

  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::filesystem::path source_;
  bool sharded_ = false;
};

// Name used in safetensors headers ("F32", "F16", "BF16").
std::string_view safetensors_dtype_name(DType t);

}  // namespace kmq

// A .kmq model file: open (memory-mapped, every offset validated), look up tensors,
// verify checksums; and KmqWriter, which writes one atomically (temp file + rename).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kmq/config.h"
#include "kmq/quant.h"
#include "kmq/tokenizer.h"
#include "kmq/types.h"

namespace kmq {

// A tensor inside a mapped file. Pointers stay valid while the KmqFile lives.
struct TensorRef {
  std::string name;
  DType dtype = DType::kF32;
  int ndim = 2;
  int64_t rows = 0, cols = 0;  // a vector has cols = 1
  const void* data = nullptr;  // float tensors: values; kmq: packed indices
  // kmq tensors only:
  int bits = 0;
  CodebookScope scope = CodebookScope::kTensor;
  int64_t group_size = 0;
  int64_t scale_block = 0;
  DType codebook_dtype = DType::kF32;
  DType scale_dtype = DType::kF16;
  const void* codebooks = nullptr;
  const void* scales = nullptr;
  uint64_t file_offset = 0, file_size = 0;  // the tensor's byte region in the file
  uint32_t crc = 0;

  int64_t numel() const { return rows * cols; }
  double bits_per_weight() const;  // true storage bits / weights (codebooks, scales counted)
};

class KmqFile {
 public:
  // Opens and validates header, metadata and directory; throws kmq::Error naming the file.
  explicit KmqFile(const std::filesystem::path& path);
  ~KmqFile();
  KmqFile(KmqFile&&) noexcept;
  KmqFile& operator=(KmqFile&&) noexcept;

  const std::string& path() const;
  uint32_t version() const;
  uint64_t file_size() const;
  const ModelConfig& config() const;
  const TokenizerData& tokenizer() const;
  const std::string& metadata_json() const;  // the whole metadata text
  const std::vector<TensorRef>& tensors() const;
  const TensorRef* find(const std::string& name) const;  // nullptr if absent
  const TensorRef& get(const std::string& name) const;   // throws naming file and tensor

  // Checks every tensor's CRC and that the padding after its region is zero; returns the
  // names of corrupted tensors (empty = intact). `kmq info --verify` prints this.
  std::vector<std::string> verify() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Streams tensors to `<path>.tmp-<pid>`; finish() writes metadata and directory, syncs
// and renames over `path`. Destroying an unfinished writer removes the temp file.
class KmqWriter {
 public:
  KmqWriter(const std::filesystem::path& path, ModelConfig config, TokenizerData tokenizer);
  ~KmqWriter();
  KmqWriter(const KmqWriter&) = delete;
  KmqWriter& operator=(const KmqWriter&) = delete;

  // A float tensor; values are converted (round to nearest even) to `dtype`.
  void add_float(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                 const float* values);
  void add_quantized(const std::string& name, const QuantizedTensor& q);
  // Extra metadata entries (JSON text of an object merged under "notes").
  void set_notes_json(const std::string& json_object);
  void finish();
  const std::filesystem::path& temp_path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// JSON text of a config, and back (validating; `where` prefixes errors).
std::string config_to_json(const ModelConfig& c);
ModelConfig config_from_json(const std::string& json_text, const std::string& where);

}  // namespace kmq

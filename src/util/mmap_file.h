// Read-only memory mapping of a whole file (RAII). Errors name the file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace kmq {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path);  // throws kmq::Error
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Reads a whole (small) file into a string; throws kmq::Error naming the file.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace kmq

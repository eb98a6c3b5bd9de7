// The log-prob file of `kmq perplexity --save-logits` / `--kl-divergence` (layout in
// include/kmq/runtime.h): a fixed 64-byte header, the evaluated token ids, then one f32
// log-softmax row per scored position. Written atomically; read row by row.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace kmq {

struct LogprobHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t n_vocab, n_ctx, stride, chunks, n_tokens, n_scored;
};
static_assert(sizeof(LogprobHeader) == 64, "the header is 64 bytes on disk");

inline constexpr char kLogprobMagic[8] = {'K', 'M', 'Q', 'L', 'O', 'G', 'P', '\0'};
inline constexpr uint32_t kLogprobVersion = 1;

class LogprobWriter {
 public:
  // Creates path.tmp-PID; commit() renames it to path, the destructor removes it otherwise.
  LogprobWriter(const std::string& path, const LogprobHeader& header, const std::vector<int32_t>& tokens);
  ~LogprobWriter();
  void write_row(const float* row);  // n_vocab floats
  void commit();                     // checks the row count, flushes, syncs, renames

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  LogprobHeader h_;
  uint64_t rows_ = 0;
};

class LogprobReader {
 public:
  // Opens and validates the header and the file size; throws kmq::Error naming the file.
  explicit LogprobReader(const std::string& path);
  ~LogprobReader();
  const LogprobHeader& header() const { return h_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  void read_row(float* row);  // the next row, n_vocab floats

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  LogprobHeader h_{};
  std::vector<int32_t> tokens_;
  uint64_t rows_ = 0;
};

}  // namespace kmq

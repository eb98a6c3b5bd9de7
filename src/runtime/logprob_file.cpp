// Reading and writing the log-prob files of perplexity --save-logits / --kl-divergence.
#include "runtime/logprob_file.h"

#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>

#include "kmq/error.h"

namespace kmq {

static_assert(std::endian::native == std::endian::little, "the log-prob file is little-endian");

LogprobWriter::LogprobWriter(const std::string& path, const LogprobHeader& header, const std::vector<int32_t>& tokens)
    : path_(path), tmp_(fmt::format("{}.tmp-{}", path, ::getpid())), h_(header) {
  std::memcpy(h_.magic, kLogprobMagic, 8);
  h_.version = kLogprobVersion;
  h_.header_bytes = sizeof(LogprobHeader);
  if (tokens.size() != h_.n_tokens) throw Error("LogprobWriter: token count differs from the header");
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) throw Error(fmt::format("{}: cannot create ({})", tmp_, std::strerror(errno)));
  if (std::fwrite(&h_, sizeof h_, 1, f_) != 1 ||
      std::fwrite(tokens.data(), sizeof(int32_t), tokens.size(), f_) != tokens.size())
    throw Error(fmt::format("{}: write failed ({})", tmp_, std::strerror(errno)));
}

LogprobWriter::~LogprobWriter() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void LogprobWriter::write_row(const float* row) {
  if (std::fwrite(row, sizeof(float), h_.n_vocab, f_) != h_.n_vocab)
    throw Error(fmt::format("{}: write failed ({}; disk full?)", tmp_, std::strerror(errno)));
  ++rows_;
}

void LogprobWriter::commit() {
  if (rows_ != h_.n_scored) throw Error(fmt::format("{}: {} rows written, {} expected", tmp_, rows_, h_.n_scored));
  const bool ok = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  std::fclose(f_);
  f_ = nullptr;
  if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp_.c_str());
    throw Error(fmt::format("{}: cannot write ({})", path_, why));
  }
}

LogprobReader::LogprobReader(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) throw Error(fmt::format("{}: cannot open ({})", path, std::strerror(errno)));
  if (std::fread(&h_, sizeof h_, 1, f_) != 1 || std::memcmp(h_.magic, kLogprobMagic, 8) != 0)
    throw Error(fmt::format("{}: not a kmq log-prob file (written by kmq perplexity --save-logits)", path));
  if (h_.version != kLogprobVersion || h_.header_bytes != sizeof(LogprobHeader))
    throw Error(fmt::format("{}: log-prob file version {} (header {} bytes); this kmq reads version {}", path,
                            h_.version, h_.header_bytes, kLogprobVersion));
  const uint64_t size = std::filesystem::file_size(path);
  // Sizes are checked before they are multiplied: no overflow, no huge allocation.
  const uint64_t max = uint64_t(1) << 40;
  if (h_.n_vocab == 0 || h_.n_vocab > (1u << 24) || h_.n_tokens > max || h_.n_scored > max)
    throw Error(fmt::format("{}: implausible header (n_vocab {}, {} tokens, {} scored)", path, h_.n_vocab, h_.n_tokens,
                            h_.n_scored));
  const uint64_t want = sizeof h_ + 4 * h_.n_tokens + 4 * h_.n_vocab * h_.n_scored;
  if (size != want)
    throw Error(fmt::format("{}: {} bytes, the header implies {} (truncated or corrupted)", path, size, want));
  tokens_.resize(h_.n_tokens);
  if (std::fread(tokens_.data(), sizeof(int32_t), tokens_.size(), f_) != tokens_.size())
    throw Error(fmt::format("{}: read failed", path));
}

LogprobReader::~LogprobReader() {
  if (f_) std::fclose(f_);
}

void LogprobReader::read_row(float* row) {
  if (rows_ >= h_.n_scored || std::fread(row, sizeof(float), h_.n_vocab, f_) != h_.n_vocab)
    throw Error(fmt::format("{}: read failed at row {}", path_, rows_));
  ++rows_;
}

}  // namespace kmq

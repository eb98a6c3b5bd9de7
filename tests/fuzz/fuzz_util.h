// Helpers shared by the libFuzzer targets (tests/fuzz/fuzz_*.cpp; see docs/RELIABILITY.md).
// The same targets are replayed on tests/fuzz/regressions/ by test_e2e_fuzz_regressions.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <stdexcept>
#include <unistd.h>

// Built as a fuzzer, a target defines LLVMFuzzerTestOneInput and a failed check traps.
// Built into tests/test_e2e_fuzz_regressions.cpp (KMQ_FUZZ_REPLAY), each target becomes
// kmq_fuzz_<name>() and a failed check throws, so replayed inputs report instead of abort.
#ifdef KMQ_FUZZ_REPLAY
#define KMQ_FUZZ_TARGET(name) int kmq_fuzz_##name(const uint8_t* data, size_t size)
#define KMQ_FUZZ_CHECK(cond) \
  do {                       \
    if (!(cond)) throw std::logic_error("fuzz check failed: " #cond); \
  } while (0)
#else
#define KMQ_FUZZ_TARGET(name) extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
#define KMQ_FUZZ_CHECK(cond) \
  do {                       \
    if (!(cond)) __builtin_trap(); \
  } while (0)
#endif

namespace kmq::fuzz {

// The shared data folder: $KMQ_SHARED, else ../shared beside the source tree.
inline std::filesystem::path shared_dir() {
  if (const char* e = std::getenv("KMQ_SHARED"); e && *e) return e;
#ifdef KMQ_SHARED_DEFAULT
  return KMQ_SHARED_DEFAULT;
#else
  return "../shared";
#endif
}

// Writes the input to one temp file per process and target (overwritten on each call).
inline std::filesystem::path write_temp(const char* tag, const uint8_t* data, size_t size) {
  const auto p = std::filesystem::temp_directory_path() /
                 ("kmq-fuzz-" + std::to_string(::getpid()) + "-" + tag);
  FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return p;
}

}  // namespace kmq::fuzz

// Helpers shared by the unit tests: where the shared data lives, random data, temp files.
#pragma once
#include <doctest/doctest.h>

#include <cstdio>
#include <initializer_list>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>
#include <unistd.h>

#include "kmq/error.h"

namespace kmq::test {

// The shared data folder: $KMQ_SHARED, else ../shared beside the source tree.
inline std::filesystem::path shared_dir() {
  if (const char* e = std::getenv("KMQ_SHARED"); e && *e) return e;
#ifdef KMQ_SHARED_DEFAULT
  return KMQ_SHARED_DEFAULT;
#else
  return "../shared";
#endif
}

// True when the shared file exists; otherwise prints why the caller skips.
inline bool have_shared(const std::string& rel) {
  auto p = shared_dir() / rel;
  if (std::filesystem::exists(p)) return true;
  std::fprintf(stderr, "SKIP: %s not found (set KMQ_SHARED)\n", p.string().c_str());
  return false;
}

inline std::filesystem::path temp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("kmq-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir / name;
}

inline std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// The message of the kmq::Error that f() throws, or "" if it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const kmq::Error& e) {
    return e.what();
  }
  return "";
}

// f() must throw a kmq::Error whose message contains every word.
template <class F>
void check_error(F&& f, std::initializer_list<std::string> words) {
  std::string msg = error_of(f);
  CAPTURE(msg);
  CHECK(!msg.empty());
  for (const auto& w : words) {
    CAPTURE(w);
    CHECK(msg.find(w) != std::string::npos);
  }
}

}  // namespace kmq::test

// Fuzz target: parse_hf_config on arbitrary config.json text. kmq::Error is fine.
#include <string>

#include "convert/hf_config.h"
#include "fuzz_util.h"
#include "kmq/error.h"

KMQ_FUZZ_TARGET(hf_config) {
  try {
    (void)kmq::parse_hf_config(std::string(reinterpret_cast<const char*>(data), size), "config.json");
  } catch (const kmq::Error&) {
  }
  return 0;
}

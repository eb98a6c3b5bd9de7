// Fuzz target: a safetensors file (header JSON, dtypes, shapes, data ranges) and loading
// its small tensors as float32. Any kmq::Error is fine; crashes and UB are not.
#include "convert/safetensors.h"
#include "fuzz_util.h"
#include "kmq/error.h"

KMQ_FUZZ_TARGET(safetensors) {
  const auto path = kmq::fuzz::write_temp("model.safetensors", data, size);
  try {
    kmq::SafetensorsFile f(path);
    for (const auto& t : f.tensors()) {
      (void)f.find(t.name);
      (void)f.bytes(t);
      if (t.n_elements() <= (1u << 16)) (void)f.load_f32(t);
    }
  } catch (const kmq::Error&) {
  }
  return 0;
}

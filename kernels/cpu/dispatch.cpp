// Chooses the kernel table once: the best ISA this CPU and build support, or $KMQ_ISA.
#include <cstdlib>
#include <string>

#include "kernels/cpu/kernels.h"
#include "kmq/error.h"

namespace kmq::cpu {

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  // __builtin_cpu_supports checks the OS's XSAVE support for the YMM state too.
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace

std::string available_isas() { return cpu_has_avx2() ? "scalar avx2" : "scalar"; }

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    const char* env = std::getenv("KMQ_ISA");
    const std::string want = env ? env : "";
    if (want.empty()) return cpu_has_avx2() ? &kernels_avx2() : &kernels_ref();
    if (want == "scalar") return &kernels_ref();
    if (want == "avx2") {
      if (!cpu_has_avx2()) throw Error("KMQ_ISA=avx2: this CPU lacks AVX2/FMA (available: " + available_isas() + ")");
      return &kernels_avx2();
    }
    if (want == "avx512" || want == "neon")
      throw Error("KMQ_ISA=" + want + ": this build has no " + want + " kernels yet (available: " + available_isas() + ")");
    throw Error("KMQ_ISA=" + want + ": unknown ISA (expected scalar, avx2, avx512 or neon)");
  }();
  return *chosen;
}

}  // namespace kmq::cpu

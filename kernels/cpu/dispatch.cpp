// Chooses the kernel table once: the best ISA this CPU and build support, or $KMQ_ISA.
#include <cstdlib>
#include <string>

#include "kernels/cpu/kernels.h"
#include "kmq/error.h"

namespace kmq::cpu {

std::string available_isas() { return "scalar"; }

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    const char* want = std::getenv("KMQ_ISA");
    if (want && *want && std::string(want) != "scalar") {
      const std::string w = want;
      if (w == "avx2" || w == "avx512" || w == "neon")
        throw Error("KMQ_ISA=" + w + ": this build has no " + w +
                    " kernels yet (available: " + available_isas() + ")");
      throw Error("KMQ_ISA=" + w + ": unknown ISA (expected scalar, avx2, avx512 or neon)");
    }
    return &kernels_ref();
  }();
  return *chosen;
}

}  // namespace kmq::cpu

// Chooses the kernel table once: the best ISA this CPU and build support, or $KMQ_ISA.
#include <cstdlib>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <string>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kmq/error.h"

namespace kmq::cpu {

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  // __builtin_cpu_supports checks the OS's XSAVE support for the YMM state too. F16C is
  // read from CPUID leaf 1 (ECX bit 29): clang's builtin does not know "f16c".
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
  return false;
#endif
}

// AVX-512 F/BW/VL/DQ with the OS's ZMM state (the builtin checks XSAVE too).
bool cpu_has_avx512() {
#if defined(__x86_64__)
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

}  // namespace

std::vector<const Kernels*> runnable_kernels() {
  std::vector<const Kernels*> t = {&kernels_ref()};
#if defined(__x86_64__)
  if (cpu_has_avx2()) t.push_back(&kernels_avx2());
  if (cpu_has_avx512()) t.push_back(&kernels_avx512());
#endif
#if defined(__aarch64__)
  t.push_back(&kernels_neon());  // NEON is part of the AArch64 base ISA
#endif
  return t;
}

std::string available_isas() {
  std::string s;
  for (const Kernels* k : runnable_kernels()) {
    if (!s.empty()) s += ' ';
    s += k->isa;
  }
  return s;
}

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    const auto tables = runnable_kernels();
    const char* env = std::getenv("KMQ_ISA");
    const std::string want = env ? env : "";
    if (want.empty()) return tables.back();
    for (const Kernels* k : tables)
      if (want == k->isa) return k;
    if (want == "avx2" || want == "avx512" || want == "neon")
      throw Error("KMQ_ISA=" + want + ": this CPU or build cannot run " + want + " kernels (available: " +
                  available_isas() + ")");
    throw Error("KMQ_ISA=" + want + ": unknown ISA (expected scalar, avx2, avx512 or neon)");
  }();
  return *chosen;
}

}  // namespace kmq::cpu

// Shared CUDA helpers: the error-check macro (throws kmq::Error naming file:line), warp
// reductions, 16-bit float loads. Host-includable: device code is behind __CUDACC__.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace kmq::cuda {

// Throws kmq::Error("CUDA error <name> (<text>) in <what> at file:line").
[[noreturn]] void check_failed(cudaError_t e, const char* what, const char* file, int line);
// Multiprocessors of the current device (read once; the persistent decode grids size by it).
int sm_count();

#define KMQ_CUDA_CHECK(call)                                                        \
  do {                                                                              \
    cudaError_t kmq_e_ = (call);                                                    \
    if (kmq_e_ != cudaSuccess) ::kmq::cuda::check_failed(kmq_e_, #call, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: catches bad configurations and missing kernel images.
#define KMQ_CUDA_LAUNCHED() KMQ_CUDA_CHECK(cudaPeekAtLastError())

#ifdef __CUDACC__
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// 16-bit float bits to f32: bf16 is the top half of an f32; f16 through the hardware.
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }
__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
  float f;
  asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ uint16_t f32_to_f16_bits(float f) {
  uint16_t h;
  asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
  return h;
}
#endif

}  // namespace kmq::cuda

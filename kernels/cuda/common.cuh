// Shared CUDA helpers: the error-check macro (throws kmq::Error naming file:line), warp
// reductions, 16-bit float loads, programmatic dependent launch (PDL). Host-includable:
// device code is behind __CUDACC__.
#pragma once
#include <cstdint>
#include <utility>

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

// Programmatic dependent launch (sm_90+; docs/PERFORMANCE.md, GPU). A kernel launched with
// pdl = true may start while the kernel before it on the stream still runs: it may read
// constant data (weights) at once, but must call pdl_wait() before it reads or writes any
// activation, and every kernel of this backend calls it in every block (so that a grid's
// completion implies its predecessors' completion). pdl_trigger() lets the next kernel's
// blocks be scheduled as soon as every block of this one has passed it. Both are no-ops
// below sm_90 and in a kernel launched without the attribute.
#ifdef __CUDACC__
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, st>>>(args...), with the programmatic-serialization
// attribute when pdl (the caller passes pdl only on sm_90+ and only when the previous work
// on the stream is a kernel of this backend). Checks the launch.
template <typename... KArgs, typename... Args>
void launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, bool pdl,
                   Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  KMQ_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

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

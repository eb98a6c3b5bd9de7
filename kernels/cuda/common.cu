// The CUDA error path (a cudaError_t becomes a kmq::Error that names the call and place) and
// device queries shared by the kernels.
#include <string>

#include "kernels/cuda/common.cuh"
#include "kmq/error.h"

namespace kmq::cuda {

void check_failed(cudaError_t e, const char* what, const char* file, int line) {
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") in " + what +
                    " at " + file + ":" + std::to_string(line);
  if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction)
    msg += ": this build has no kernels for this GPU's architecture (built for sm_80, sm_89, sm_90; set "
           "CMAKE_CUDA_ARCHITECTURES)";
  throw Error(msg);
}

int sm_count() {
  static const int n = [] {
    int dev = 0, c = 0;
    KMQ_CUDA_CHECK(cudaGetDevice(&dev));
    KMQ_CUDA_CHECK(cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev));
    return c;
  }();
  return n;
}

}  // namespace kmq::cuda

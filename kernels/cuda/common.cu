// The CUDA error path: turns a cudaError_t into a kmq::Error that names the call and place.
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

}  // namespace kmq::cuda

// The CUDA backend's entry points. Compiled only when KMQ_CUDA is on (KMQ_HAVE_CUDA is
// then defined for everything that links kmq_backend); make_backend dispatches to it.
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"

namespace kmq {

// Usable CUDA devices; 0 with *why set ("no CUDA driver", "no device", ...) when none.
int cuda_device_count(std::string* why = nullptr);

// Creates the CUDA backend on device $KMQ_CUDA_DEVICE (default 0). Throws kmq::Error when
// no device is present, or it is older than compute capability 8.0, or the build has no
// kernels for it. $KMQ_CUDA_GRAPHS=0 turns off CUDA-graph replay of repeated steps.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);

}  // namespace kmq

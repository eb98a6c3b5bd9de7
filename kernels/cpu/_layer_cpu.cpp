// layer kernels/cpu

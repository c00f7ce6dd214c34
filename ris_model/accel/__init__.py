"""GPU execution of the science: CUDA-graph replay, compiled fusion, Triton kernels and the low-precision
operators of the look pass. Every route here computes what its plain torch counterpart computes; which route
runs is chosen by arguments (`FusedRoutes`, `ModelConfig.cuda_graphs`), never by module state."""

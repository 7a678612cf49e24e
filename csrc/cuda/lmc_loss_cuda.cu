// lmc_loss and its backward on CUDA: the entries of host/lmc_loss.h with GridPasses<CudaGridLauncher>.
// GEMMs by at::mm (cuBLAS, in full float32 under at::NoTF32Guard whatever the caller's TF32 setting); the
// element-wise passes are launched over the bodies of kernels/lmc_loss_bodies.h on the current stream, a
// warp per row for the normalisation and the forward's LSE. No atomics: every output has one owner and every
// reduction a fixed order, so results are deterministic.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/launch.cuh"
#include "host/lmc_loss.h"

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  using Passes = lmcl::lmc::GridPasses<lmcl::CudaGridLauncher>;
  m.impl("lmc_loss", &lmcl::lmc::lmc_loss_entry<Passes>);
  m.impl("_lmc_loss_backward", &lmcl::lmc::lmc_loss_backward_entry<Passes>);
}

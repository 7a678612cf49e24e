// The CPU stand-in for lmcl::launch_grid (csrc/cuda/launch.cuh): runs a kernel Body for every
// (block, thread) of the launch, in the order a serial GPU would, so tests check that the launcher's
// grid covers every output exactly once and that its bounds guards hold.
#pragma once

#include "kernels/common.h"

namespace lmcl {

template <typename Body>
void run_grid_on_host(const typename Body::Params& params, LaunchConfig config) {
  for (int64_t block = 0; block < config.blocks; ++block) {
    for (int64_t thread = 0; thread < config.threads; ++thread) {
      Body::run(params, GridIndex{block, thread, config.threads, config.blocks});
    }
  }
}

// run_grid_on_host as a function object: the stand-in for CudaGridLauncher (csrc/cuda/launch.cuh).
struct HostGridLauncher {
  template <typename Body>
  void operator()(Body, const typename Body::Params& params, LaunchConfig config) const {
    run_grid_on_host<Body>(params, config);
  }
};

}  // namespace lmcl

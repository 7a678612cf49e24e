// HostGridLauncher: the launcher interface of csrc/host/launch.h on the CPU, the stand-in for
// CudaGridLauncher (csrc/cuda/launch.cuh). It runs a kernel Body for every (block, thread) of the launch,
// in the order a serial GPU would, so tests check that the grid covers every output exactly once and
// that the bounds guards hold.
#pragma once

#include "host/launch.h"
#include "kernels/common.h"

namespace lmcl {

struct HostGridLauncher {
  using Guard = NoDeviceGuard;
  GridShape shape;

  template <typename Body>
  void operator()(Body, const typename Body::Params& params, int64_t items) const {
    const LaunchConfig config = shape.cover(items);
    for (int64_t block = 0; block < config.blocks; ++block) {
      for (int64_t thread = 0; thread < config.threads; ++thread) {
        Body::run(params, GridIndex{block, thread, config.threads, config.blocks});
      }
    }
  }
};

}  // namespace lmcl

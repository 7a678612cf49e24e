// HostGridLauncher: the launcher interface of csrc/host/launch.h run on the CPU, for the tests.
// The stand-in for CudaGridLauncher (csrc/cuda/launch.cuh). It runs a kernel Body for every (block, thread)
// of the launch, in the order a serial GPU would, so tests check that the grid covers every output exactly
// once and that the bounds guards hold.
#pragma once

#include <array>

#include "host/launch.h"
#include "kernels/common.h"
#include "kernels/row_groups.h"

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

  // A row-group body as row_group_kernel runs it: group g (warp g % (threads / 32) of block g / (threads / 32))
  // takes rows g, g + groups, ...; the butterfly exchange is done lane by lane, each lane combining its own
  // state with its partner's, in the GPU's order.
  template <typename Body>
  void rows(Body, const typename Body::Params& params) const {
    using State = typename Body::State;
    const LaunchConfig config = shape.cover_rows(Body::rows(params));
    const int64_t groups = config.blocks * (config.threads / kRowLanes);
    std::array<State, kRowLanes> lanes, next;
    for (int64_t group = 0; group < groups; ++group) {
      for (int64_t row = group; row < Body::rows(params); row += groups) {
        for (int lane = 0; lane < kRowLanes; ++lane) {
          lanes[lane] = Body::partial(params, row, lane, kRowLanes);
        }
        for (int offset = kRowLanes / 2; offset > 0; offset /= 2) {
          for (int lane = 0; lane < kRowLanes; ++lane) {
            next[lane] = Body::combine(lanes[lane], lanes[lane ^ offset]);
          }
          lanes = next;
        }
        for (int lane = 0; lane < kRowLanes; ++lane) {
          Body::finish(params, row, lane, kRowLanes, lanes[lane]);
        }
      }
    }
  }
};

}  // namespace lmcl

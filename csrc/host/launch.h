// The one launcher interface (launcher(Body{}, params, items); launcher.rows(Body{}, params) for row-group
// bodies, kernels/row_groups.h) and the launch defaults (GridShape). Plain C++, compiled by g++ too. A
// launcher runs the kernel Body over a grid-stride loop covering `items`, or a group of threads per row:
// CudaGridLauncher (csrc/cuda/launch.cuh) on the GPU, HostGridLauncher (python_tests/grid_runner/grid_runner.h)
// on the CPU in the tests. Both size the grid with GridShape and name the device guard a call holds (Guard).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

#include "kernels/common.h"
#include "kernels/row_groups.h"

namespace lmcl {

// A 1-D launch: `blocks` blocks of `threads` threads.
struct LaunchConfig {
  int64_t blocks;
  int64_t threads;
};

// Threads per block and the cap on the grid. The defaults are the GPU's; the grid-runner tests shrink
// them so that the grid-stride loops wrap around.
struct GridShape {
  int64_t threads = 256;
  int64_t max_blocks = 4096;

  // Enough blocks to give each of `items` a thread, capped at max_blocks (the grid-stride loop covers
  // the rest). Zero blocks for no items: launchers return before launching.
  LaunchConfig cover(int64_t items) const {
    const int64_t wanted = items <= 0 ? 0 : ceil_div<int64_t>(items, threads);
    return LaunchConfig{wanted < max_blocks ? wanted : max_blocks, threads};
  }

  // A row-group launch (kernels/row_groups.h): threads rounded up to whole groups of kRowLanes, a group per
  // row, capped at max_blocks (each group's grid-stride loop covers the rest).
  LaunchConfig cover_rows(int64_t rows) const {
    const int64_t group_threads = ceil_div<int64_t>(threads > 0 ? threads : 1, kRowLanes) * kRowLanes;
    const int64_t wanted = rows <= 0 ? 0 : ceil_div<int64_t>(rows, group_threads / kRowLanes);
    return LaunchConfig{wanted < max_blocks ? wanted : max_blocks, group_threads};
  }
};

// The Guard of backends that need none (the CPU, the grid runner).
struct NoDeviceGuard {
  explicit NoDeviceGuard(const c10::Device&) {}
};

}  // namespace lmcl

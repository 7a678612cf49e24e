// lmc_loss launch configuration, host only (ATen allowed, no CUDA API; compiles with g++): how each
// pass of ops/lmc_loss_tiling.h maps onto a 1-D grid. The CUDA kernel runs these passes with
// launch_grid; the grid-runner test (python_tests/grid_runner/lmc_loss_grid.cpp) runs exactly the
// same configurations on the CPU with run_grid_on_host.
#pragma once

#include "kernels/common.h"
#include "kernels/lmc_loss.h"

namespace lmcl {
namespace lmc {

// Launcher: a type with `template <class Body> void run(const typename Body::Params&, LaunchConfig)`.
template <typename Launcher>
struct GridPasses {
  Launcher launcher;
  int64_t threads = 256;
  int64_t max_blocks = 4096;

  // Row passes: one thread per item (row), grid-stride over the rest.
  template <class Body>
  void for_each(const typename Body::Params& p, int64_t items, int64_t /*cost*/) {
    launcher.template run<Body>(p, grid_stride_config(items, threads, max_blocks));
  }

  // The backward tile pass: one thread per tile element, so neighbouring threads touch neighbouring
  // elements (coalesced loads and stores).
  template <typename acc_t>
  void grad_tile(const typename GradTileBody<acc_t>::Params& p) {
    launcher.template run<GradTileBody<acc_t>>(p, grid_stride_config(p.t.rows * p.t.cols, threads, max_blocks));
  }
};

}  // namespace lmc
}  // namespace lmcl

// Row passes run by a group of kRowLanes threads per row (one warp on the GPU), for rows too long for one
// thread: lane l takes the row's elements l, l + kRowLanes, ... (a warp reads 32 neighbouring elements at a
// time: coalesced), the lanes' partial states are combined by a butterfly exchange (lane l with lane
// l ^ offset, offset = kRowLanes / 2, ..., 1), after which every lane holds a total and finishes its own
// elements. A row-group body has, besides Params:
//   using State = ...;   trivially copyable, a whole number of 32-bit words (exchanged word by word)
//   static int64_t rows(const Params&);
//   static State partial(const Params&, int64_t row, int lane, int lanes);
//   static State combine(const State& mine, const State& other);
//   static void finish(const Params&, int64_t row, int lane, int lanes, const State& total);
// The GPU runs it with warp shuffles (csrc/cuda/launch.cuh), the grid runner lane by lane in the same
// exchange order (python_tests/grid_runner/grid_runner.h). The CPU runs a row per thread (the body's item:
// finish with one lane, after sums kept in independent lane-blocked accumulators, which vectorise).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/common.h"

namespace lmcl {

constexpr int kRowLanes = 32;

// Whether Body is a row-group body (has a State), for launchers that run both kinds.
template <class Body, class = void>
struct is_row_group_body : std::false_type {};
template <class Body>
struct is_row_group_body<Body, std::void_t<typename Body::State>> : std::true_type {};

}  // namespace lmcl

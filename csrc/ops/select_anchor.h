// select_anchor argument checks shared by the CPU and CUDA entries (schema in select_anchor.cpp).
#pragma once

#include <ATen/ATen.h>

namespace lmcl {

// scores floating [B, N] with N >= 1.
void check_select_anchor_args(const at::Tensor& scores);

}  // namespace lmcl

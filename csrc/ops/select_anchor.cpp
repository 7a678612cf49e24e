// select_anchor schema and argument checks (no kernels here).
#include "ops/select_anchor.h"

#include <torch/library.h>

namespace lmcl {

void check_select_anchor_args(const at::Tensor& scores) {
  TORCH_CHECK_TYPE(at::isFloatingType(scores.scalar_type()),
                   "select_anchor: scores must be a floating tensor (float32, float16, bfloat16 or float64), got ",
                   scores.scalar_type());
  TORCH_CHECK(scores.dim() == 2, "select_anchor: scores must have shape [B, N], got ", scores.sizes());
  TORCH_CHECK(scores.size(1) >= 1, "select_anchor: scores must have at least one crop (N >= 1), got shape ",
              scores.sizes());
}

}  // namespace lmcl

TORCH_LIBRARY_FRAGMENT(lmcl, m) {
  m.def("select_anchor(Tensor scores) -> Tensor");
}

// lmc_loss argument checks shared by the CPU and CUDA entries (schema in lmc_loss.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace lmcl {

// Metadata and scalar rules (mirrored by the fake in lmcl_fast/ops/lmc_loss.py), then, with
// check_anchor_values (CPU tensors only), the one data-dependent rule: anchor_idx in [0, N). CUDA checks it
// in a kernel instead (AnchorCheckBody), with no device-to-host read. The backward skips it: forward already
// checked the same tensor, and the kernels clamp the index anyway.
void check_lmc_loss_args(const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
                         const at::Tensor& teacher_keys, int64_t key_offset, double tau, double intra_weight,
                         double manifold_weight, int64_t key_tile, bool check_anchor_values);

// The saved forward outputs and the upstream gradient handed to _lmc_loss_backward.
void check_lmc_loss_backward_args(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& z_keys,
                                  const at::Tensor& cluster_lse, const at::Tensor& cluster_logits,
                                  const at::Tensor& manifold_lse, const std::optional<at::Tensor>& unit_grad_q,
                                  const std::optional<at::Tensor>& unit_grad_anchors,
                                  const std::optional<at::Tensor>& unit_grad_z_keys,
                                  const std::optional<at::Tensor>& unit_grad_teacher_keys);

}  // namespace lmcl

// lmc_loss schema and argument checks (no kernels here).
// Kernels: csrc/cpu/lmc_loss_cpu.cpp, csrc/cuda/lmc_loss_cuda.cu, both driving the tile loop of host/lmc_loss.h.
#include "ops/lmc_loss.h"

#include <torch/library.h>

#include <cmath>

namespace lmcl {

namespace {

void check_embeddings(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 3, "lmc_loss: ", name, " must have shape [B, N, D], got ", t.sizes());
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
                   "lmc_loss: ", name, " must be float32, float16 or bfloat16 (float64 for gradcheck), got ", dtype);
}

}  // namespace

void check_lmc_loss_args(const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
                         const at::Tensor& teacher_keys, int64_t key_offset, double tau, double intra_weight,
                         double manifold_weight, int64_t key_tile, bool check_anchor_values) {
  check_embeddings(z, "z");
  check_embeddings(z_keys, "z_keys");
  check_embeddings(teacher_keys, "teacher");
  const int64_t B = z.size(0);
  const int64_t N = z.size(1);
  TORCH_CHECK_VALUE(B >= 2, "lmc_loss: z needs B >= 2 images (the other images are the negatives), got B = ", B);
  TORCH_CHECK_VALUE(N >= 2, "lmc_loss: z needs N >= 2 crops per image, got N = ", N);
  TORCH_CHECK_TYPE(z_keys.scalar_type() == z.scalar_type(), "lmc_loss: z_keys must have the dtype of z (",
                   z.scalar_type(), "), got ", z_keys.scalar_type());
  TORCH_CHECK_TYPE(teacher_keys.scalar_type() == z.scalar_type(), "lmc_loss: teacher must have the dtype of z (",
                   z.scalar_type(), "), got ", teacher_keys.scalar_type());
  TORCH_CHECK(z_keys.size(0) >= B && z_keys.size(1) == N && z_keys.size(2) == z.size(2),
              "lmc_loss: z_keys must have shape [K >= B, N, D] with z's N and D ", z.sizes(), ", got ",
              z_keys.sizes());
  TORCH_CHECK(teacher_keys.sizes() == z_keys.sizes(), "lmc_loss: teacher must have the shape ", z_keys.sizes(),
              " of the student keys (z, or z gathered over the group), got ", teacher_keys.sizes());
  TORCH_CHECK(z_keys.device() == z.device() && teacher_keys.device() == z.device() &&
                  anchor_idx.device() == z.device(),
              "lmc_loss: z, z_keys, teacher and anchor_idx must be on one device, got z on ", z.device(),
              ", z_keys on ", z_keys.device(), ", teacher on ", teacher_keys.device(), ", anchor_idx on ",
              anchor_idx.device());
  TORCH_CHECK_TYPE(anchor_idx.scalar_type() == at::kLong, "lmc_loss: anchor_idx must be int64, got ",
                   anchor_idx.scalar_type());
  TORCH_CHECK(anchor_idx.dim() == 1 && anchor_idx.size(0) == B, "lmc_loss: anchor_idx must have shape [B] = [", B,
              "], got ", anchor_idx.sizes());
  TORCH_CHECK_VALUE(key_offset >= 0 && key_offset + B <= z_keys.size(0), "lmc_loss: key_offset must place z's ", B,
                    " images inside z_keys' ", z_keys.size(0), ", got key_offset = ", key_offset);
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau > 0.0, "lmc_loss: tau must be positive and finite, got ", tau);
  TORCH_CHECK_VALUE(std::isfinite(intra_weight) && intra_weight >= 0.0,
                    "lmc_loss: intra_weight must be finite and >= 0, got ", intra_weight);
  TORCH_CHECK_VALUE(std::isfinite(manifold_weight), "lmc_loss: manifold_weight must be finite, got ",
                    manifold_weight);
  TORCH_CHECK_VALUE(key_tile >= 0, "lmc_loss: key_tile must be >= 0 (0: automatic), got ", key_tile);
  if (!check_anchor_values) {
    return;
  }
  // CPU tensors only (the CUDA entry checks in a kernel: csrc/host/lmc_loss.h): no device is waited for.
  const auto [lo, hi] = at::aminmax(anchor_idx);
  const at::Tensor bounds = at::stack({lo, hi}).cpu();
  const int64_t min_idx = bounds.data_ptr<int64_t>()[0];
  const int64_t max_idx = bounds.data_ptr<int64_t>()[1];
  TORCH_CHECK_VALUE(min_idx >= 0 && max_idx < N, "lmc_loss: anchor_idx must be in [0, N) = [0, ", N,
                    "), got values in [", min_idx, ", ", max_idx, "]");
}

namespace {

// A unit gradient given to the backward: acc-typed [rows, D] on z's device, or [0, D] (not computed).
void check_unit_grad(const std::optional<at::Tensor>& t, const char* name, int64_t rows, int64_t D,
                     at::ScalarType acc, const at::Device& device) {
  if (!t.has_value()) {
    return;
  }
  TORCH_CHECK(t->dim() == 2 && (t->size(0) == rows || t->size(0) == 0) && t->size(1) == D &&
                  t->scalar_type() == acc && t->device() == device,
              "_lmc_loss_backward: ", name, " must be ", acc, " [", rows, ", ", D, "] (or [0, ", D, "]) on ", device,
              ", got ", t->sizes(), " ", t->scalar_type(), " on ", t->device());
}

}  // namespace

void check_lmc_loss_backward_args(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& z_keys,
                                  const at::Tensor& cluster_lse, const at::Tensor& cluster_logits,
                                  const at::Tensor& manifold_lse, const std::optional<at::Tensor>& unit_grad_q,
                                  const std::optional<at::Tensor>& unit_grad_anchors,
                                  const std::optional<at::Tensor>& unit_grad_z_keys,
                                  const std::optional<at::Tensor>& unit_grad_teacher_keys) {
  const auto acc = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(grad.numel() == 1 && grad.scalar_type() == acc && grad.device() == z.device(),
              "_lmc_loss_backward: grad must be one ", acc, " value on z's device (", z.device(), "), got ",
              grad.sizes(), " ", grad.scalar_type(), " on ", grad.device());
  const int64_t B = z.size(0);
  const int64_t N = z.size(1);
  const int64_t D = z.size(2);
  TORCH_CHECK(cluster_lse.sizes() == at::IntArrayRef({B}) && cluster_lse.scalar_type() == acc,
              "_lmc_loss_backward: cluster_lse must be ", acc, " [", B, "], got ", cluster_lse.sizes());
  TORCH_CHECK(cluster_logits.sizes() == at::IntArrayRef({B, N}) && cluster_logits.scalar_type() == acc,
              "_lmc_loss_backward: cluster_logits must be ", acc, " [", B, ", ", N, "], got ", cluster_logits.sizes());
  TORCH_CHECK(manifold_lse.sizes() == at::IntArrayRef({B * N}) && manifold_lse.scalar_type() == acc,
              "_lmc_loss_backward: manifold_lse must be ", acc, " [", B * N, "], got ", manifold_lse.sizes());
  const int64_t Mk = z_keys.size(0) * N;
  check_unit_grad(unit_grad_q, "unit_grad_q", B * N, D, acc, z.device());
  check_unit_grad(unit_grad_anchors, "unit_grad_anchors", B, D, acc, z.device());
  check_unit_grad(unit_grad_z_keys, "unit_grad_z_keys", Mk, D, acc, z.device());
  check_unit_grad(unit_grad_teacher_keys, "unit_grad_teacher_keys", Mk, D, acc, z.device());
}

TORCH_LIBRARY_FRAGMENT(lmcl, m) {
  // Queries are this process's z; keys are z_keys / teacher_keys (all ranks' crops, gathered in Python;
  // the inputs themselves in one process), key_offset = first key image of z. Returns the loss and the
  // per-row state backward needs: log NEG_i and the anchor's logits p_ik of the cluster rows, and the
  // manifold rows' log-sum-exp. key_tile: keys per similarity tile (0 picks it from the batch size).
  // need_grad_* say which of (z, z_keys, teacher_keys) will need a gradient: the forward then also returns
  // the loss's gradient w.r.t. their normalised rows for grad_loss = 1 (unit_grad_*, float32 [rows, D], O(M D);
  // [0, D] for the others), computed while the last similarity tile is still in memory, and the backward
  // only scales them. Backward: need_grad_* again; the others come back as zeros and their GEMMs are
  // skipped (a detached EMA teacher saves a quarter of the work). Without the unit gradients (or when they
  // miss a needed part) it recomputes the similarities tile by tile.
  m.def(
      "lmc_loss(Tensor z, Tensor anchor_idx, Tensor z_keys, Tensor teacher_keys, int key_offset, float tau, "
      "float intra_weight, float manifold_weight, int key_tile=0, bool need_grad_z=False, "
      "bool need_grad_z_keys=False, bool need_grad_teacher_keys=False) -> (Tensor loss, Tensor cluster_lse, "
      "Tensor cluster_logits, Tensor manifold_lse, Tensor unit_grad_q, Tensor unit_grad_anchors, "
      "Tensor unit_grad_z_keys, Tensor unit_grad_teacher_keys)");
  m.def(
      "_lmc_loss_backward(Tensor grad, Tensor z, Tensor anchor_idx, Tensor z_keys, Tensor teacher_keys, "
      "Tensor cluster_lse, Tensor cluster_logits, Tensor manifold_lse, int key_offset, float tau, "
      "float intra_weight, float manifold_weight, bool need_grad_z, bool need_grad_z_keys, "
      "bool need_grad_teacher_keys, int key_tile=0, Tensor? unit_grad_q=None, Tensor? unit_grad_anchors=None, "
      "Tensor? unit_grad_z_keys=None, Tensor? unit_grad_teacher_keys=None) -> (Tensor grad_z, "
      "Tensor grad_z_keys, Tensor grad_teacher_keys)");
}

}  // namespace lmcl

// lmc_loss host side for every backend and the grid runner: the tile loop, GridPasses and the entries.
// Tensors -> Params of the bodies in csrc/kernels/lmc_loss_bodies.h, the GEMMs (at::mm), the order of passes,
// the backend entries, and GridPasses (each pass one launch, csrc/host/launch.h). A `Passes` object runs the
// bodies: CpuPasses (at::parallel_for, csrc/cpu/lmc_loss_cpu.cpp) or GridPasses<Launcher>.
//
// The tile loop (the GPU's and grid runner's forward, every recomputing backward): keys are processed in
// chunks of T rows. Forward: S = Q K_chunk^T (GEMM), then one pass updates
// each row's running max and sum. The pair gradients recompute S, turn it into gradient coefficients G in
// place, then dQ += G K_chunk and dK_chunk = G^T Q. Memory O(M D + M T); nothing [M, M] is kept.
//
// When the caller says which inputs will need a gradient (the autograd wrapper does, from requires_grad),
// the forward also computes the gradients with respect to the normalised rows for grad_loss = 1 ("unit
// gradients", O(M D)), and backward only scales them and runs the normalisation's backward. When every key
// fits one tile, the forward's S is still in the tile buffer: no similarity is computed twice, so a training
// step does the three GEMMs of eager autograd instead of four. The CPU's forward runs row strips instead
// (lmc_loss_forward_row_strips): every key against a strip of query rows, in the same memory as the tiles,
// so three GEMMs at every size.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <tuple>

#include "kernels/lmc_loss_bodies.h"
#include "ops/lmc_loss.h"

namespace lmcl {
namespace lmc {

struct LmcOptions {
  int64_t key_offset;
  double tau;
  double intra_weight;
  double manifold_weight;
  int64_t key_tile;  // 0: default_key_tile
  // Check anchor_idx in a kernel (AnchorCheckBody: a device-side assert, no device->host read): the CUDA
  // entry and the grid runner. The CPU entry checks on the host instead (check_lmc_loss_args).
  bool check_anchor_idx_in_kernel = false;
};

// The [B*N, T] tile is the only buffer that grows with the batch: about 128 MiB of float32, and at
// least 256 keys wide so that the GEMMs stay efficient.
inline int64_t default_key_tile(int64_t query_rows, int64_t key_rows) {
  const int64_t budget = (int64_t(1) << 25) / std::max<int64_t>(query_rows, 1);
  return std::max<int64_t>(1, std::min(key_rows, std::max<int64_t>(256, budget)));
}

// float64 inputs (gradcheck) compute in float64; every other dtype in float32.
inline at::ScalarType acc_type_of(const at::Tensor& z) {
  return z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

constexpr double kNormEps = 1e-12;

template <typename acc_t, typename Passes>
at::Tensor normalized_rows(Passes& passes, const at::Tensor& x) {
  const int64_t rows = x.size(0) * x.size(1);
  const int64_t D = x.size(2);
  at::Tensor out = at::empty({rows, D}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lmcl::lmc_loss_normalize", [&] {
    using Body = NormalizeBody<scalar_t, acc_t>;
    const typename Body::Params p{x.data_ptr<scalar_t>(), rows,        x.size(1),      D,
                                  x.stride(0),            x.stride(1), x.stride(2),    static_cast<acc_t>(kNormEps),
                                  out.data_ptr<acc_t>()};
    passes.template for_each<Body>(p, rows, 3 * D);
  });
  return out;
}

template <typename acc_t, typename Passes>
at::Tensor normalize_backward(Passes& passes, const at::Tensor& x, const at::Tensor& grad_hat,
                              const at::Tensor* anchor_grad, const at::Tensor& anchor_idx, const at::Tensor& grad_out) {
  const int64_t rows = x.size(0) * x.size(1);
  const int64_t D = x.size(2);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lmcl::lmc_loss_normalize_backward", [&] {
    using Body = NormalizeBackwardBody<scalar_t, acc_t>;
    const typename Body::Params p{x.data_ptr<scalar_t>(),
                                  rows,
                                  x.size(1),
                                  D,
                                  x.stride(0),
                                  x.stride(1),
                                  x.stride(2),
                                  static_cast<acc_t>(kNormEps),
                                  grad_hat.data_ptr<acc_t>(),
                                  anchor_grad ? anchor_grad->data_ptr<acc_t>() : nullptr,
                                  anchor_idx.data_ptr<int64_t>(),
                                  grad_out.data_ptr<acc_t>(),
                                  out.data_ptr<scalar_t>()};
    passes.template for_each<Body>(p, rows, 5 * D);
  });
  return out;
}

// Normalised queries, keys of both kinds, and the anchor queries. Inputs passed twice (one process,
// teacher=None) are normalised once.
template <typename acc_t>
struct Normalized {
  at::Tensor q, kz, kt, anchors;
};

template <typename acc_t, typename Passes>
Normalized<acc_t> normalize_all(Passes& passes, const at::Tensor& z, const at::Tensor& anchor_idx,
                                const at::Tensor& z_keys, const at::Tensor& teacher_keys) {
  Normalized<acc_t> n;
  n.q = normalized_rows<acc_t>(passes, z);
  n.kz = z_keys.is_same(z) ? n.q : normalized_rows<acc_t>(passes, z_keys);
  n.kt = teacher_keys.is_same(z_keys) ? n.kz
         : teacher_keys.is_same(z)    ? n.q
                                      : normalized_rows<acc_t>(passes, teacher_keys);
  const at::Tensor rows = at::arange(z.size(0), anchor_idx.options()) * z.size(1) + anchor_idx;
  n.anchors = n.q.index_select(0, rows);
  return n;
}

// Params of a tile pass over S [rows, cols] (query rows row0.., key rows col0..). Cluster rows when
// anchor_idx is set.
template <typename acc_t>
TileParams<acc_t> tile_params(at::Tensor& s, int64_t col0, int64_t N, const LmcOptions& o, const int64_t* anchor_idx,
                              int64_t row0 = 0) {
  const bool cluster = anchor_idx != nullptr;
  const acc_t minus_inf = -std::numeric_limits<acc_t>::infinity();
  return TileParams<acc_t>{s.data_ptr<acc_t>(),
                           s.size(0),
                           s.size(1),
                           s.stride(0),
                           s.stride(1),
                           col0,
                           N,
                           o.key_offset,
                           anchor_idx,
                           static_cast<acc_t>(1.0 / o.tau),
                           cluster ? minus_inf : acc_t(0),
                           cluster ? minus_inf : static_cast<acc_t>(std::log(o.intra_weight)),
                           row0};
}

// A contiguous [rows, cols] view at the start of a flat buffer (the last chunk is narrower).
inline at::Tensor tile_view(at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// The forward's similarity tile S = Q K^T [rows, keys] in `buffer`, row-major: the CPU's row loops run over
// contiguous memory, and the GPU's row groups read neighbouring keys of a row in neighbouring lanes.
inline at::Tensor similarity_tile(at::Tensor& buffer, const at::Tensor& q, const at::Tensor& k) {
  at::Tensor s = tile_view(buffer, q.size(0), k.size(0));
  at::mm_out(s, q, k.t());
  return s;
}

// Which of (z, z_keys, teacher_keys) need a gradient.
using GradNeeds = std::array<bool, 3>;

// The loss's gradient for grad_loss = 1 with respect to the normalised rows, in acc_t, contiguous: queries
// q [Mq, D] and anchor queries [B, D] (both z's), student keys kz [Mk, D], teacher keys kt [Mk, D]. A part
// that no input needs is [0, D].
struct UnitGrads {
  at::Tensor q, anchors, kz, kt;
};

// Uninitialised unit gradients shaped by `needs` for the normalised rows in `n`.
template <typename acc_t>
UnitGrads empty_unit_grads(const Normalized<acc_t>& n, GradNeeds needs) {
  const int64_t D = n.q.size(1);
  const int64_t Mk = n.kz.size(0);
  const auto opts = n.q.options();
  return {at::empty({needs[0] ? n.q.size(0) : 0, D}, opts), at::empty({needs[0] ? n.anchors.size(0) : 0, D}, opts),
          at::empty({needs[1] ? Mk : 0, D}, opts), at::empty({needs[2] ? Mk : 0, D}, opts)};
}

// The pair gradients of every key tile (see the top of this file). first_tile_ready: the buffers already hold
// the similarities of the key tile at 0 (the forward's, when one tile covers every key), so its GEMMs are not
// run again.
template <typename acc_t, typename Passes>
UnitGrads unit_grads_tiled(Passes& passes, const Normalized<acc_t>& n, const int64_t* anchor_ptr,
                           const at::Tensor& cluster_lse, const at::Tensor& cluster_logits,
                           const at::Tensor& manifold_lse, const LmcOptions& o, GradNeeds needs, int64_t N, int64_t T,
                           at::Tensor& man_buf, at::Tensor& clu_buf, bool first_tile_ready) {
  const int64_t B = n.anchors.size(0);
  const int64_t Mq = n.q.size(0);
  const int64_t Mk = n.kz.size(0);
  const auto opts = n.q.options();
  const auto [need_q, need_kz, need_kt] = needs;
  UnitGrads g = empty_unit_grads(n, needs);
  if (!need_q && !need_kz && !need_kt) {
    return g;
  }
  const acc_t inv_tau = static_cast<acc_t>(1.0 / o.tau);
  at::Tensor pos_coef = at::empty({B, N}, opts);
  at::Tensor row_scale = at::empty({B}, opts);
  passes.template for_each<ClusterCoefBody<acc_t>>(
      {B, N, anchor_ptr, cluster_logits.data_ptr<acc_t>(), cluster_lse.data_ptr<acc_t>(),
       static_cast<acc_t>(1.0 / static_cast<double>(B * (N - 1))) * inv_tau, pos_coef.data_ptr<acc_t>(),
       row_scale.data_ptr<acc_t>()},
      B, 16 * N);
  const acc_t man_scale = static_cast<acc_t>(o.manifold_weight / static_cast<double>(Mq)) * inv_tau;
  // dq and da sum over the key tiles: the first tile writes them (beta = 0), the others add.
  const auto accumulate = [](at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool first) {
    if (first) {
      at::mm_out(out, a, b);
    } else {
      out.addmm_(a, b);
    }
  };
  for (int64_t c0 = 0; c0 < Mk; c0 += T) {
    const int64_t tc = std::min(T, Mk - c0);
    const bool ready = first_tile_ready && c0 == 0;
    if (need_q || need_kt) {
      const at::Tensor kt = n.kt.narrow(0, c0, tc);
      at::Tensor s = tile_view(man_buf, Mq, tc);
      if (!ready) {
        at::mm_out(s, n.q, kt.t());
      }
      passes.template grad_tile<acc_t>({tile_params<acc_t>(s, c0, N, o, nullptr), manifold_lse.data_ptr<acc_t>(),
                                        nullptr, man_scale, nullptr});
      if (need_q) {
        accumulate(g.q, s, kt, c0 == 0);
      }
      if (need_kt) {
        at::Tensor dkt_chunk = g.kt.narrow(0, c0, tc);
        at::mm_out(dkt_chunk, s.t(), n.q);
      }
    }
    if (need_q || need_kz) {
      const at::Tensor kz = n.kz.narrow(0, c0, tc);
      at::Tensor sc = tile_view(clu_buf, B, tc);
      if (!ready) {
        at::mm_out(sc, n.anchors, kz.t());
      }
      passes.template grad_tile<acc_t>({tile_params<acc_t>(sc, c0, N, o, anchor_ptr), cluster_lse.data_ptr<acc_t>(),
                                        row_scale.data_ptr<acc_t>(), acc_t(0), pos_coef.data_ptr<acc_t>()});
      if (need_q) {
        accumulate(g.anchors, sc, kz, c0 == 0);
      }
      if (need_kz) {
        at::Tensor dkz_chunk = g.kz.narrow(0, c0, tc);
        at::mm_out(dkz_chunk, sc.t(), n.anchors);
      }
    }
  }
  return g;
}

// The online log-sum-exp state of a set of query rows (manifold rows or cluster rows) and, after the last
// tile, their LSE and row losses; the Params of the passes over them.
template <typename acc_t>
struct RowLse {
  at::Tensor max, sum, same, lse, loss;
  int64_t N;
  const int64_t* anchor_idx;  // cluster rows when set

  // The row state is left unset: a whole-row pass sets it (lse_row_weights); the tile loop starts it
  // empty first (start_empty).
  RowLse(int64_t rows, int64_t N_, const int64_t* anchor_idx_, const at::TensorOptions& opts)
      : max(at::empty({rows}, opts)),
        sum(at::empty({rows}, opts)),
        same(at::empty({rows, N_}, opts)),
        lse(at::empty({rows}, opts)),
        loss(at::empty({rows}, opts)),
        N(N_),
        anchor_idx(anchor_idx_) {}

  // No key seen yet: max -inf, sum 0 (lse_union's empty set).
  void start_empty() {
    max.fill_(-std::numeric_limits<acc_t>::infinity());
    sum.zero_();
  }

  // The LSE update over the similarity tile `s` of keys col0...
  typename LseTileBody<acc_t>::Params update(at::Tensor& s, int64_t col0, const LmcOptions& o, int64_t row0 = 0) {
    return {tile_params<acc_t>(s, col0, N, o, anchor_idx, row0), max.data_ptr<acc_t>(), sum.data_ptr<acc_t>(),
            same.data_ptr<acc_t>()};
  }
  const acc_t* lse_data() const { return lse.data_ptr<acc_t>(); }
  const acc_t* sum_data() const { return sum.data_ptr<acc_t>(); }
  const acc_t* same_data() const { return same.data_ptr<acc_t>(); }
  typename FinalizeBody<acc_t>::Params finalize() {
    return {lse.size(0),           N, anchor_idx, max.data_ptr<acc_t>(), sum.data_ptr<acc_t>(), same.data_ptr<acc_t>(),
            lse.data_ptr<acc_t>(), loss.data_ptr<acc_t>()};
  }
};

using ForwardOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The loss from the row losses. Rows are normalised by this process's B, so the mean over ranks is the
// global loss.
inline at::Tensor loss_from_rows(const at::Tensor& clu_loss, const at::Tensor& man_loss, int64_t B, int64_t N,
                                 const LmcOptions& o) {
  const double scale_c = 1.0 / static_cast<double>(B * (N - 1));
  const double scale_m = o.manifold_weight / static_cast<double>(B * N);
  return clu_loss.sum().mul_(scale_c).add_(man_loss.sum().mul_(scale_m));
}

// loss_from_rows for row losses in host memory, summed in order in double: a handful of ATen calls fewer
// per step, which at M = 512 is a measurable share of the step.
template <typename acc_t>
at::Tensor loss_from_host_rows(const at::Tensor& clu_loss, const at::Tensor& man_loss, int64_t B, int64_t N,
                               const LmcOptions& o) {
  const auto total = [](const at::Tensor& rows) {
    const acc_t* v = rows.data_ptr<acc_t>();
    return std::accumulate(v, v + rows.numel(), 0.0);
  };
  const double loss = total(clu_loss) / static_cast<double>(B * (N - 1)) +
                      o.manifold_weight * total(man_loss) / static_cast<double>(B * N);
  at::Tensor out = at::empty({}, clu_loss.options());
  *out.data_ptr<acc_t>() = static_cast<acc_t>(loss);
  return out;
}

// Images per row strip of one worker: about 8 MiB of similarities (2^21 floats), so that a strip stays in
// cache from its GEMM through its passes and the next GEMMs, but at least 256 rows (fewer make slow GEMMs,
// and every strip reads and writes the worker's share of the key gradients again); never more than the
// worker's share of the similarities the tile loop would hold (query_rows x tile: tile = key_tile, or
// default_key_tile's ~128 MiB), nor more than the worker's images.
inline int64_t strip_images(int64_t images, int64_t N, int64_t key_rows, int64_t tile, int64_t workers) {
  const int64_t per_worker = (images + workers - 1) / workers;
  int64_t strip = std::max<int64_t>((int64_t(1) << 21) / std::max<int64_t>(key_rows, 1), 256) / N;
  if (tile < key_rows) {
    strip = std::min(strip, images * tile / (workers * key_rows));
  }
  return std::clamp<int64_t>(strip, 1, std::max<int64_t>(per_worker, 1));
}

// Output floats per GEMM of a strip's similarities (strip_similarities): 1 MiB, about one core's L2.
constexpr int64_t kStripGemmFloats = int64_t(1) << 18;

// s = q k^T for a strip of query rows against every key, in blocks of keys of about kStripGemmFloats outputs
// (at least 256 keys): MKL clears its output before it accumulates, and a block's output is still in L2 when
// the products land, where one GEMM over all keys sends the whole strip through memory twice. The same bits
// as one GEMM in every case measured; at M = 65,536 (256-row strips, 1024 keys per block) the op ran 12 %
// faster (bench/RESULTS.md, stop 15).
inline void strip_similarities(at::Tensor& s, const at::Tensor& q, const at::Tensor& k) {
  const int64_t keys = k.size(0);
  const int64_t block = std::max<int64_t>(256, kStripGemmFloats / std::max<int64_t>(q.size(0), 1));
  for (int64_t c0 = 0; c0 < keys; c0 += block) {
    const int64_t c = std::min(block, keys - c0);
    at::Tensor out = s.narrow(1, c0, c);
    at::mm_out(out, q, k.narrow(0, c0, c).t());
  }
}

// The forward over row strips, on a backend that runs blocks of images in parallel (Passes::kRowBlocks: the
// CPU). One parallel region: each worker takes a contiguous block of images and runs it in strips of rows
// against every key at once. Per strip: its similarities (GEMMs of its own, strip_similarities); each row's
// log-sum-exp and loss, leaving the pair weights exp(logit - max) in place (lse_row_weights); and, for the inputs in
// `needs`, the pair gradients from those weights in place (one exp per pair in all), its rows of dq and da,
// and its addition to the worker's share of dkz and dkt. Worker 0 adds into the gradients themselves; the
// other shares are added after the region, in worker order. As every key is in the strip when its row LSE
// is known, the pair gradients reuse the forward's similarities: three GEMMs per step at every size instead
// of the tile loop's four. A small problem is one strip per worker: one parallel region instead of a dozen
// (each waits for its slowest thread, which on a busy machine may be descheduled), and the element-wise
// passes run on every thread. A row's values differ from the tile loop's by the GEMMs' summation order and
// the rounding of w * scale / sum against exp(logit - lse) * scale.
template <typename acc_t, typename Passes>
ForwardOutputs lmc_loss_forward_row_strips(Passes& passes, const Normalized<acc_t>& n, const int64_t* anchor_ptr,
                                           int64_t N, int64_t T, const LmcOptions& o, GradNeeds needs) {
  const int64_t B = n.anchors.size(0);
  const int64_t Mq = n.q.size(0);
  const int64_t Mk = n.kt.size(0);
  const int64_t D = n.q.size(1);
  const auto opts = n.q.options();
  const auto [need_q, need_kz, need_kt] = needs;
  const acc_t inv_tau = static_cast<acc_t>(1.0 / o.tau);

  RowLse<acc_t> man(Mq, N, nullptr, opts);
  RowLse<acc_t> clu(B, N, anchor_ptr, opts);
  at::Tensor pos_coef = at::empty({B, N}, opts), row_scale = at::empty({B}, opts);
  UnitGrads g = empty_unit_grads(n, needs);
  const int64_t workers = passes.block_count(B);
  const int64_t strip = strip_images(B, N, Mk, T, workers);
  at::Tensor kt_shares = at::empty({need_kt ? workers - 1 : 0, Mk, D}, opts);
  at::Tensor kz_shares = at::empty({need_kz ? workers - 1 : 0, Mk, D}, opts);

  const auto man_fin_p = man.finalize();
  const auto clu_fin_p = clu.finalize();
  const typename ClusterCoefBody<acc_t>::Params coef_p{
      B,
      N,
      anchor_ptr,
      clu.same_data(),
      clu.lse_data(),
      static_cast<acc_t>(1.0 / static_cast<double>(B * (N - 1))) * inv_tau,
      pos_coef.data_ptr<acc_t>(),
      row_scale.data_ptr<acc_t>()};
  const acc_t man_scale = static_cast<acc_t>(o.manifold_weight / static_cast<double>(Mq)) * inv_tau;

  passes.blocks(B, workers, [&](int64_t worker, int64_t w0, int64_t w1) {
    const int64_t strip_max = std::min(strip, w1 - w0);
    at::Tensor s_buf = at::empty({strip_max * N * Mk}, opts);
    at::Tensor sc_buf = at::empty({strip_max * Mk}, opts);
    const auto share = [&](bool need, const at::Tensor& grad, const at::Tensor& shares) {
      return !need ? at::Tensor() : worker == 0 ? grad : shares.select(0, worker - 1);
    };
    at::Tensor dkt = share(need_kt, g.kt, kt_shares);
    at::Tensor dkz = share(need_kz, g.kz, kz_shares);
    // Rows of G in place of the similarities, then the query rows' gradient G K and the addition G^T Q to
    // the worker's share of the keys' gradient (the worker's first strip writes it).
    const auto gemms = [&](const at::Tensor& g_rows, const at::Tensor& keys, const at::Tensor& queries,
                           std::optional<at::Tensor> dq_rows, at::Tensor& dk, bool first) {
      if (dq_rows) {
        at::mm_out(*dq_rows, g_rows, keys);
      }
      if (dk.defined()) {
        if (first) {
          at::mm_out(dk, g_rows.t(), queries);
        } else {
          dk.addmm_(g_rows.t(), queries);
        }
      }
    };
    using Out = std::optional<at::Tensor>;
    for (int64_t b0 = w0; b0 < w1; b0 += strip_max) {
      const int64_t b1 = std::min(w1, b0 + strip_max);
      const int64_t r0 = b0 * N, r1 = b1 * N;
      const bool first = b0 == w0;
      const at::Tensor q_rows = n.q.narrow(0, r0, r1 - r0);
      const at::Tensor a_rows = n.anchors.narrow(0, b0, b1 - b0);
      at::Tensor s_rows = tile_view(s_buf, r1 - r0, Mk);
      at::Tensor sc_rows = tile_view(sc_buf, b1 - b0, Mk);
      strip_similarities(s_rows, q_rows, n.kt);
      passes.template serial<LseWeightsRowBody<acc_t>>(man.update(s_rows, 0, o, r0), r0, r1);
      passes.template serial<FinalizeBody<acc_t>>(man_fin_p, r0, r1);
      strip_similarities(sc_rows, a_rows, n.kz);
      passes.template serial<LseWeightsRowBody<acc_t>>(clu.update(sc_rows, 0, o, b0), b0, b1);
      passes.template serial<FinalizeBody<acc_t>>(clu_fin_p, b0, b1);
      if (need_q || need_kt) {
        passes.template serial<GradWeightsRowBody<acc_t>>(
            {tile_params<acc_t>(s_rows, 0, N, o, nullptr, r0), man.sum_data(), nullptr, man_scale, nullptr}, r0, r1);
        gemms(s_rows, n.kt, q_rows, need_q ? Out(g.q.narrow(0, r0, r1 - r0)) : std::nullopt, dkt, first);
      }
      if (need_q || need_kz) {
        passes.template serial<ClusterCoefBody<acc_t>>(coef_p, b0, b1);
        passes.template serial<GradWeightsRowBody<acc_t>>({tile_params<acc_t>(sc_rows, 0, N, o, anchor_ptr, b0),
                                                            clu.sum_data(), row_scale.data_ptr<acc_t>(), acc_t(0),
                                                            pos_coef.data_ptr<acc_t>()},
                                                           b0, b1);
        gemms(sc_rows, n.kz, a_rows, need_q ? Out(g.anchors.narrow(0, b0, b1 - b0)) : std::nullopt, dkz, first);
      }
    }
  });
  for (int64_t k = 0; k + 1 < workers; ++k) {
    if (need_kt) {
      g.kt.add_(kt_shares.select(0, k));
    }
    if (need_kz) {
      g.kz.add_(kz_shares.select(0, k));
    }
  }
  return {loss_from_host_rows<acc_t>(clu.loss, man.loss, B, N, o), clu.lse, clu.same, man.lse, g.q, g.anchors, g.kz,
          g.kt};
}

// Returns (loss, cluster_lse [B], cluster_logits [B, N], manifold_lse [B*N], and the unit gradients q,
// anchors, kz, kt of the inputs in `needs` ([0, D] for the others)).
template <typename acc_t, typename Passes>
ForwardOutputs lmc_loss_forward_tiled(
    Passes& passes, const at::Tensor& z, const at::Tensor& anchor_idx_in, const at::Tensor& z_keys,
    const at::Tensor& teacher_keys, const LmcOptions& o, GradNeeds needs) {
  const int64_t B = z.size(0);
  const int64_t N = z.size(1);
  const int64_t Mq = B * N;
  const int64_t Mk = z_keys.size(0) * N;
  const at::Tensor anchor_idx = anchor_idx_in.contiguous();
  if (o.check_anchor_idx_in_kernel) {  // before the anchor rows are gathered
    passes.template for_each<AnchorCheckBody>({anchor_idx.data_ptr<int64_t>(), B, N}, B, 1);
  }
  const Normalized<acc_t> n = normalize_all<acc_t>(passes, z, anchor_idx, z_keys, teacher_keys);
  const int64_t T = o.key_tile > 0 ? std::min(o.key_tile, Mk) : default_key_tile(Mq, Mk);
  const int64_t* anchor_ptr = anchor_idx.data_ptr<int64_t>();
  if constexpr (Passes::kRowBlocks) {
    return lmc_loss_forward_row_strips<acc_t>(passes, n, anchor_ptr, N, T, o, needs);
  } else {
    const auto opts = n.q.options();
    RowLse<acc_t> man(Mq, N, nullptr, opts);
    RowLse<acc_t> clu(B, N, anchor_ptr, opts);
    man.start_empty();
    clu.start_empty();
    at::Tensor man_buf = at::empty({Mq * T}, opts);
    at::Tensor clu_buf = at::empty({B * T}, opts);
    for (int64_t c0 = 0; c0 < Mk; c0 += T) {
      const int64_t tc = std::min(T, Mk - c0);
      at::Tensor s = similarity_tile(man_buf, n.q, n.kt.narrow(0, c0, tc));
      passes.template for_each<LseTileBody<acc_t>>(man.update(s, c0, o), Mq, 8 * tc);
      at::Tensor sc = similarity_tile(clu_buf, n.anchors, n.kz.narrow(0, c0, tc));
      passes.template for_each<LseTileBody<acc_t>>(clu.update(sc, c0, o), B, 8 * tc);
    }
    passes.template for_each<FinalizeBody<acc_t>>(man.finalize(), Mq, 8);
    passes.template for_each<FinalizeBody<acc_t>>(clu.finalize(), B, 8 * N);

    at::Tensor loss = loss_from_rows(clu.loss, man.loss, B, N, o);
    const UnitGrads g = unit_grads_tiled<acc_t>(passes, n, anchor_ptr, clu.lse, clu.same, man.lse, o, needs, N, T,
                                                man_buf, clu_buf, /*first_tile_ready=*/T >= Mk);
    return {loss, clu.lse, clu.same, man.lse, g.q, g.anchors, g.kz, g.kt};
  }
}

// Whether the forward's unit gradients cover what backward needs (the wrapper asks for exactly the
// gradients autograd will want; a direct call of the ops may not have).
inline bool covers(const UnitGrads& saved, GradNeeds needs) {
  const auto has = [](const at::Tensor& t) { return t.defined() && t.size(0) > 0; };
  return (!needs[0] || (has(saved.q) && has(saved.anchors))) && (!needs[1] || has(saved.kz)) &&
         (!needs[2] || has(saved.kt));
}

// Returns (grad_z, grad_z_keys, grad_teacher_keys), in the inputs' dtypes, contiguous; zeros (and no
// GEMM) for those whose `needs` entry is false. The forward's unit gradients are used when they cover
// `needs`, else the pair gradients are recomputed tile by tile.
template <typename acc_t, typename Passes>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lmc_loss_backward_tiled(
    Passes& passes, const at::Tensor& grad, const at::Tensor& z, const at::Tensor& anchor_idx_in,
    const at::Tensor& z_keys, const at::Tensor& teacher_keys, const at::Tensor& cluster_lse_in,
    const at::Tensor& cluster_logits_in, const at::Tensor& manifold_lse_in, const LmcOptions& o, GradNeeds needs,
    const UnitGrads& saved) {
  const int64_t B = z.size(0);
  const int64_t N = z.size(1);
  const int64_t Mq = B * N;
  const int64_t Mk = z_keys.size(0) * N;
  const at::Tensor anchor_idx = anchor_idx_in.contiguous();
  const at::Tensor grad_out = grad.reshape({1}).contiguous();
  UnitGrads g;
  if (covers(saved, needs)) {
    const auto contiguous = [](const at::Tensor& t) { return t.defined() ? t.contiguous() : t; };
    g = UnitGrads{contiguous(saved.q), contiguous(saved.anchors), contiguous(saved.kz), contiguous(saved.kt)};
  } else {
    const Normalized<acc_t> n = normalize_all<acc_t>(passes, z, anchor_idx, z_keys, teacher_keys);
    const int64_t T = o.key_tile > 0 ? std::min(o.key_tile, Mk) : default_key_tile(Mq, Mk);
    at::Tensor man_buf = at::empty({Mq * T}, n.q.options());
    at::Tensor clu_buf = at::empty({B * T}, n.q.options());
    g = unit_grads_tiled<acc_t>(passes, n, anchor_idx.data_ptr<int64_t>(), cluster_lse_in.contiguous(),
                                cluster_logits_in.contiguous(), manifold_lse_in.contiguous(), o, needs, N, T, man_buf,
                                clu_buf, /*first_tile_ready=*/false);
  }
  const auto zeros_like_input = [](const at::Tensor& x) { return at::zeros(x.sizes(), x.options()); };
  return {needs[0] ? normalize_backward<acc_t>(passes, z, g.q, &g.anchors, anchor_idx, grad_out) : zeros_like_input(z),
          needs[1] ? normalize_backward<acc_t>(passes, z_keys, g.kz, nullptr, anchor_idx, grad_out)
                   : zeros_like_input(z_keys),
          needs[2] ? normalize_backward<acc_t>(passes, teacher_keys, g.kt, nullptr, anchor_idx, grad_out)
                   : zeros_like_input(teacher_keys)};
}

// Every backend's entry point (and the grid runner) runs the tile loop through these two, in z's
// accumulation type: float64 for float64 inputs (gradcheck), float32 otherwise. The GEMMs run in full
// float32 whatever the caller allowed for its own matmuls (torch.backends.cuda.matmul.allow_tf32,
// set_float32_matmul_precision("high")): TF32 rounds the similarities to ~1e-3, which 1/tau magnifies far
// beyond the loss's tolerance. at::NoTF32Guard is ATen's thread-local switch for this; it leaves the
// caller's settings untouched and ends with the call.
template <typename Passes>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lmc_loss_forward(Passes& passes, const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
                 const at::Tensor& teacher_keys, const LmcOptions& o, GradNeeds needs) {
  const at::NoTF32Guard full_float32_gemms;
  if (acc_type_of(z) == at::kDouble) {
    return lmc_loss_forward_tiled<double>(passes, z, anchor_idx, z_keys, teacher_keys, o, needs);
  }
  return lmc_loss_forward_tiled<float>(passes, z, anchor_idx, z_keys, teacher_keys, o, needs);
}

template <typename Passes>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lmc_loss_backward(
    Passes& passes, const at::Tensor& grad, const at::Tensor& z, const at::Tensor& anchor_idx,
    const at::Tensor& z_keys, const at::Tensor& teacher_keys, const at::Tensor& cluster_lse,
    const at::Tensor& cluster_logits, const at::Tensor& manifold_lse, const LmcOptions& o, GradNeeds needs,
    const UnitGrads& saved = {}) {
  const at::NoTF32Guard full_float32_gemms;
  if (acc_type_of(z) == at::kDouble) {
    return lmc_loss_backward_tiled<double>(passes, grad, z, anchor_idx, z_keys, teacher_keys, cluster_lse,
                                           cluster_logits, manifold_lse, o, needs, saved);
  }
  return lmc_loss_backward_tiled<float>(passes, grad, z, anchor_idx, z_keys, teacher_keys, cluster_lse,
                                        cluster_logits, manifold_lse, o, needs, saved);
}

// The element-wise passes as grid launches (CUDA entry, grid runner). Launcher: csrc/host/launch.h.
template <typename Launcher>
struct GridPasses {
  using Guard = typename Launcher::Guard;
  static constexpr bool kRowBlocks = false;  // the tile loop, every pass one launch
  Launcher launcher;

  // Row passes: a warp per row for the row-group bodies (normalisation, the forward's LSE: long rows read
  // by neighbouring lanes, coalesced), else one thread per row (short rows of N values); grid-stride over
  // the rest.
  template <class Body>
  void for_each(const typename Body::Params& p, int64_t items, int64_t /*cost*/) {
    if constexpr (is_row_group_body<Body>::value) {
      launcher.rows(Body{}, p);
    } else {
      launcher(Body{}, p, items);
    }
  }

  // The backward tile pass: one thread per tile element, so neighbouring threads touch neighbouring
  // elements (coalesced loads and stores).
  template <typename acc_t>
  void grad_tile(const typename GradTileBody<acc_t>::Params& p) {
    launcher(GradTileBody<acc_t>{}, p, p.t.rows * p.t.cols);
  }
};

// The registered kernels of a backend: m.impl("lmc_loss", &lmc_loss_entry<Passes>). Checks (anchor_idx
// values in the forward only: the backward gets the tensor forward checked; on the host for CPU tensors,
// in a kernel otherwise, so that CUDA never waits for the host), then Passes::Guard (the device guard on
// CUDA) for the length of the call.
template <typename Passes>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lmc_loss_entry(const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
               const at::Tensor& teacher_keys, int64_t key_offset, double tau, double intra_weight,
               double manifold_weight, int64_t key_tile, bool need_grad_z, bool need_grad_z_keys,
               bool need_grad_teacher_keys) {
  const bool on_host = z.is_cpu();
  check_lmc_loss_args(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile,
                      /*check_anchor_values=*/on_host);
  const typename Passes::Guard guard(z.device());
  Passes passes;
  return lmc_loss_forward(passes, z, anchor_idx, z_keys, teacher_keys,
                          LmcOptions{key_offset, tau, intra_weight, manifold_weight, key_tile, !on_host},
                          {need_grad_z, need_grad_z_keys, need_grad_teacher_keys});
}

template <typename Passes>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lmc_loss_backward_entry(
    const at::Tensor& grad, const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
    const at::Tensor& teacher_keys, const at::Tensor& cluster_lse, const at::Tensor& cluster_logits,
    const at::Tensor& manifold_lse, int64_t key_offset, double tau, double intra_weight, double manifold_weight,
    bool need_grad_z, bool need_grad_z_keys, bool need_grad_teacher_keys, int64_t key_tile,
    const std::optional<at::Tensor>& unit_grad_q, const std::optional<at::Tensor>& unit_grad_anchors,
    const std::optional<at::Tensor>& unit_grad_z_keys, const std::optional<at::Tensor>& unit_grad_teacher_keys) {
  check_lmc_loss_args(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile,
                      /*check_anchor_values=*/false);
  check_lmc_loss_backward_args(grad, z, z_keys, cluster_lse, cluster_logits, manifold_lse, unit_grad_q,
                               unit_grad_anchors, unit_grad_z_keys, unit_grad_teacher_keys);
  const auto or_undefined = [](const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); };
  const typename Passes::Guard guard(z.device());
  Passes passes;
  return lmc_loss_backward(passes, grad, z, anchor_idx, z_keys, teacher_keys, cluster_lse, cluster_logits,
                           manifold_lse, LmcOptions{key_offset, tau, intra_weight, manifold_weight, key_tile},
                           {need_grad_z, need_grad_z_keys, need_grad_teacher_keys},
                           UnitGrads{or_undefined(unit_grad_q), or_undefined(unit_grad_anchors),
                                     or_undefined(unit_grad_z_keys), or_undefined(unit_grad_teacher_keys)});
}

}  // namespace lmc
}  // namespace lmcl

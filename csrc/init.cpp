// The Python module lmcl_fast._C: loads the op registrations and exposes build_info().
// Loading it runs the static TORCH_LIBRARY registrations of every op compiled into this library; the ops
// themselves are reached through torch.ops.lmcl, never through pybind11. The module exposes one function,
// build_info(), so tests can prove how it was built.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef LMCL_CUDA_ARCHS
#define LMCL_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

// How many distinct threads at::parallel_for actually used for a small job. An extension compiled
// without -fopenmp gets the serial fallback of at::parallel_for and reports 1 here.
int64_t parallel_for_threads_used() {
  std::atomic<int64_t> max_thread{0};
  at::parallel_for(0, 4096, 1, [&](int64_t, int64_t) {
    const int64_t id = at::get_thread_num() + 1;
    int64_t seen = max_thread.load();
    while (id > seen && !max_thread.compare_exchange_weak(seen, id)) {
    }
  });
  return max_thread.load();
}

py::dict build_info() {
  py::dict info;
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_version"] = static_cast<int>(_OPENMP);
#else
  info["openmp"] = false;
  info["openmp_version"] = 0;
#endif
  info["num_threads"] = at::get_num_threads();
  info["parallel_for_threads_used"] = parallel_for_threads_used();
#ifdef LMCL_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cuda_archs"] = std::string(LMCL_CUDA_ARCHS);
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = std::string("unknown");
#endif
#ifdef __OPTIMIZE__
  info["optimized"] = true;
#else
  info["optimized"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lmcl_fast compiled ops (registered under torch.ops.lmcl)";
  m.def("build_info", &build_info,
        "How this library was built: OpenMP, threads at::parallel_for uses, CUDA, archs, compiler.");
}

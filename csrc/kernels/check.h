// LMCL_KERNEL_CHECK: a value check on data inside a kernel Body, with no device->host read.
// On the GPU a failed check is a device-side assert (CUDA_KERNEL_ASSERT_PRINTF): the message is printed on
// stdout and the launch fails with "device-side assert triggered" at the next synchronisation; the CUDA
// context is unusable from then on. On the host (the grid runner runs the CUDA bodies on the CPU) the same
// message is raised as a ValueError, so the tests see the check. The CPU ops check on the host before any
// kernel and never reach these. `fmt` is a printf format (int64 values passed as long long with %lld).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdarg>
#include <cstdio>
#include <string>

#if defined(__CUDA_ARCH__)
#define LMCL_KERNEL_CHECK(cond, fmt, ...)                  \
  do {                                                     \
    CUDA_KERNEL_ASSERT_PRINTF(cond, fmt, __VA_ARGS__)      \
  } while (0)
#else
#define LMCL_KERNEL_CHECK(cond, fmt, ...)                  \
  do {                                                     \
    if (C10_UNLIKELY(!(cond))) {                           \
      ::lmcl::raise_kernel_check(fmt, __VA_ARGS__);        \
    }                                                      \
  } while (0)
#endif

namespace lmcl {

// The host side of LMCL_KERNEL_CHECK: the ValueError with the formatted message.
[[noreturn]] inline void raise_kernel_check(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] inline void raise_kernel_check(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  const int size = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string message(size > 0 ? static_cast<size_t>(size) : 0, '\0');
  if (size > 0) {
    std::vsnprintf(message.data(), message.size() + 1, fmt, args);
  }
  va_end(args);
  TORCH_CHECK_VALUE(false, message);
  TORCH_INTERNAL_ASSERT(false, "unreachable");
}

}  // namespace lmcl

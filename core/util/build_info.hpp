// What this acmo was built with, for `acmo version` and the acmo_build_info metric.
#pragma once

#include <string>

#include <fmt/core.h>

namespace acmo {

// The compiler and its version, e.g. "GCC 12.2.0" or "Clang 16.0.6".
inline std::string compiler_name()
{
#if defined(__clang__)
  return fmt::format("Clang {}.{}.{}", __clang_major__, __clang_minor__, __clang_patchlevel__);
#elif defined(__GNUC__)
  return fmt::format("GCC {}.{}.{}", __GNUC__, __GNUC_MINOR__, __GNUC_PATCHLEVEL__);
#else
  return "an unknown compiler";
#endif
}

} // namespace acmo

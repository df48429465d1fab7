#include "core/util/error.hpp"

namespace acmo {

const char* errc_name(Errc code)
{
  switch (code) {
  case Errc::invalid_input: return "invalid_input";
  case Errc::not_found: return "not_found";
  case Errc::stale: return "stale_receipt";
  case Errc::busy: return "busy";
  case Errc::unavailable: return "unavailable";
  case Errc::conflict: return "conflict";
  case Errc::internal: return "internal";
  }
  return "internal";
}

int exit_code_for(const Error& error)
{
  return error.field == "data_dir" ? exit_code::k_usage : exit_code_for(error.code);
}

int exit_code_for(Errc code)
{
  switch (code) {
  case Errc::invalid_input:
  case Errc::stale: return exit_code::k_rejected;
  case Errc::not_found: return exit_code::k_not_found;
  case Errc::busy:
  case Errc::unavailable: return exit_code::k_temporary;
  case Errc::conflict:
  case Errc::internal: return exit_code::k_failure;
  }
  return exit_code::k_failure;
}

} // namespace acmo

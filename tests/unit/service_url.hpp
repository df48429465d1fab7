// The URLs of the test services (scripts/test-services.sh start prints them), shared by the
// PostgreSQL and Redis test helpers.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

#include <catch2/catch.hpp>

namespace acmo::test {

// The URL of a test service in the environment `variable`. Without it the test is skipped with
// a warning, or fails when CI=true: in CI a missing server is a failure.
inline std::optional<std::string> service_url(const std::string& variable)
{
  const char* url = std::getenv(variable.c_str());
  if (url != nullptr && *url != '\0') return std::string(url);
  const char* ci = std::getenv("CI");
  if (ci != nullptr && std::string(ci) == "true") {
    FAIL(variable << " is not set: run the tests through scripts/test.sh, or "
                     "eval \"$(scripts/test-services.sh start)\" first");
  }
  WARN("skipped: " << variable << " is not set; eval \"$(scripts/test-services.sh start)\" "
                   "starts the servers for the tests");
  return std::nullopt;
}

} // namespace acmo::test

#include "core/util/paths.hpp"

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include <fmt/core.h>
#include <unistd.h>

namespace acmo {

namespace fs = std::filesystem;

namespace {

std::string env(const char* name)
{
  const char* value = std::getenv(name);
  return value ? value : "";
}

} // namespace

std::string resolve_data_dir(const std::string& flag, const std::string& configured)
{
  if (!flag.empty()) return flag;
  if (auto v = env("ACMO_DATA_DIR"); !v.empty()) return v;
  if (!configured.empty()) return configured;
  if (auto v = env("XDG_STATE_HOME"); !v.empty()) return v + "/acmo";
  if (auto v = env("HOME"); !v.empty()) return v + "/.local/state/acmo";
  return ".acmo";
}

Expected<void> ensure_directory(const std::string& dir)
{
  // Create first, then look: checking before creating would race with another acmo process
  // creating the same new directory at the same moment (a handler and a send started together).
  std::error_code create_ec;
  if (fs::create_directories(dir, create_ec)) {
    std::error_code ec;
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace, ec);
    return {};
  }
  std::error_code ec;
  if (fs::is_directory(dir, ec)) {
    // SQLite would only say "unable to open database file".
    if (::access(dir.c_str(), W_OK | X_OK) != 0 && errno == EACCES) {
      return make_error(Errc::unavailable,
                        fmt::format("this user may not write the data directory {} (permission "
                                    "denied); run acmo as its owner, or pass --data-dir with a "
                                    "directory this user can write",
                                    dir),
                        "data_dir");
    }
    return {};
  }
  if (fs::exists(dir, ec)) {
    return make_error(Errc::invalid_input,
                      fmt::format("the data directory {} exists but is not a directory; pass "
                                  "--data-dir with a directory",
                                  dir),
                      "data_dir");
  }
  return make_error(Errc::unavailable,
                    fmt::format("cannot create the data directory {}: {}; pass --data-dir with "
                                "a writable directory",
                                dir, create_ec.message()),
                    "data_dir");
}

std::string database_path(const std::string& data_dir) { return data_dir + "/acmo.db"; }

} // namespace acmo

// acmo version: the version of acmo and of what it was built with.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/queue/sqlite/schema.hpp"
#include "core/sqlite/sqlite.hpp"
#include "core/util/build_info.hpp"

namespace acmo::cli {

namespace {

int run_version(const GlobalOptions& global)
{
  const std::string compiler = compiler_name();
  if (global.json) {
    print_json({{"version", ACMO_VERSION},
                {"sqlite", sqlite::library_version()},
                {"schema", schema::migrations().size()},
                {"compiler", compiler}});
  } else {
    fmt::print("acmo {}\n", ACMO_VERSION);
    if (!global.quiet) {
      fmt::print("SQLite {}, database schema version {}, built with {}\n",
                 sqlite::library_version(), schema::migrations().size(), compiler);
    }
  }
  return exit_code::k_ok;
}

} // namespace

Runner setup_version(CLI::App& /*sub*/, const GlobalOptions& global)
{
  return [&global] { return run_version(global); };
}

} // namespace acmo::cli

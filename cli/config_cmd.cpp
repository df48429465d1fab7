// acmo config show | check: the configuration in force and where each value came from.
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"

namespace acmo::cli {

namespace {

int run_show(bool show_secrets, const GlobalOptions& global)
{
  const Config& cfg = config(global);
  auto shown = [show_secrets](const ConfigKey& key, const ConfigValue& value) {
    return show_secrets ? value : redacted(key, value);
  };
  if (global.json) {
    nlohmann::ordered_json doc = nlohmann::ordered_json::object(); // in the table's order
    for (const auto& key : config_keys()) {
      const auto& entry = cfg.entry(key.name);
      nlohmann::ordered_json value;
      std::visit([&](const auto& v) { value = v; }, shown(key, entry.value));
      doc[key.name] = {{"value", value}, {"source", entry.source}};
    }
    fmt::print("{}\n", doc.dump());
    return exit_code::k_ok;
  }
  std::vector<std::pair<std::string, std::string>> rows;
  for (const auto& key : config_keys()) {
    const auto& entry = cfg.entry(key.name);
    rows.emplace_back(key.name, fmt::format("{:<24} # {}", format_value(key, shown(key, entry.value)),
                                            entry.source));
  }
  print_table(rows);
  return exit_code::k_ok;
}

int run_check(const GlobalOptions& global)
{
  const Config* loaded = nullptr;
  try {
    loaded = &config(global); // throws Fatal (exit 2) with file:line:column on errors
  } catch (const Fatal& e) {
    // A script asked for JSON: it gets the verdict on stdout too, the error still on stderr.
    if (global.json) print_json({{"ok", false}, {"error", e.what()}});
    throw;
  }
  const Config& cfg = *loaded;
  if (global.json) {
    print_json({{"ok", true}, {"file", cfg.file()}});
  } else if (!global.quiet) {
    fmt::print("{}: ok\n", cfg.file().empty() ? "no configuration file; defaults" : cfg.file());
  }
  return exit_code::k_ok;
}

} // namespace

Runner setup_config(CLI::App& sub, const GlobalOptions& global)
{
  sub.require_subcommand(1);
  auto* show = sub.add_subcommand("show", "Print every key's value and where it came from; "
                                            "tokens and passwords as ***");
  auto show_secrets = std::make_shared<bool>(false);
  show->add_flag("--show-secrets", *show_secrets,
                 "Print tokens and the passwords in connection URLs in clear");
  auto* check = sub.add_subcommand("check", "Check the configuration file and environment");
  return [show, check, show_secrets, &global] {
    if (show->parsed()) return run_show(*show_secrets, global);
    if (check->parsed()) return run_check(global);
    return exit_code::k_usage;
  };
}

} // namespace acmo::cli

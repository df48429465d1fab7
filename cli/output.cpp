#include "cli/output.hpp"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <unistd.h>

#include <fmt/core.h>

#include "core/util/log.hpp"

namespace acmo::cli {

bool stdout_is_tty() { return isatty(STDOUT_FILENO) == 1; }
bool stdin_is_tty() { return isatty(STDIN_FILENO) == 1; }

bool use_colour()
{
  const char* no_colour = std::getenv("NO_COLOR");
  return isatty(STDERR_FILENO) == 1 && (no_colour == nullptr || *no_colour == '\0');
}

void print_error(std::string_view message)
{
  // A long-running process (serve, run-handler) logging JSON Lines: its last word is a line
  // of that log too, so that every line parses.
  if (log::long_running() && log::json()) {
    return log::write(log::Level::error, {"fatal"}, message);
  }
  // A message may quote what a sender wrote; its lines (a list of problems) stay lines.
  const std::string text = log::printable(message, "\n");
  if (use_colour()) {
    fmt::print(stderr, "acmo: \033[1;31merror:\033[0m {}\n", text);
  } else {
    fmt::print(stderr, "acmo: error: {}\n", text);
  }
}

int report(const Error& error)
{
  print_error(error.message);
  return exit_code_for(error);
}

void print_json(const nlohmann::json& doc)
{
  std::string text = doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text += '\n';
  std::fwrite(text.data(), 1, text.size(), stdout);
}

void print_table(const std::vector<std::pair<std::string, std::string>>& rows)
{
  size_t width = 0;
  for (const auto& [label, value] : rows) width = std::max(width, label.size());
  for (const auto& [label, value] : rows) {
    fmt::print("{:<{}}  {}\n", label, width, log::printable(value));
  }
}

bool confirm(std::string_view question)
{
  fmt::print(stderr, "{} [y/N] ", question);
  std::fflush(stderr);
  std::string answer;
  if (!std::getline(std::cin, answer)) return false;
  // Only a yes: "y" or "yes" in any case, spaces around it aside. Anything else ("yn", "no",
  // "ye", a stray keystroke) answers no.
  const auto first = answer.find_first_not_of(" \t\r");
  const auto last = answer.find_last_not_of(" \t\r");
  if (first == std::string::npos) return false;
  std::string word = answer.substr(first, last - first + 1);
  for (char& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return word == "y" || word == "yes";
}

int64_t parse_seconds_flag(std::string_view flag, const std::string& given, int64_t default_s,
                           int64_t max_s)
{
  if (given.empty()) return 0;
  if (given == "true") return default_s;
  int64_t v = 0;
  bool digits = given.size() <= 9;
  for (char c : given) {
    if (c < '0' || c > '9') digits = false;
    if (digits) v = v * 10 + (c - '0');
  }
  if (!digits || v < 1 || v > max_s) {
    throw Fatal(fmt::format("{} takes a whole number of seconds from 1 to {}, attached as {}=SECS "
                            "(got \"{}\")",
                            flag, max_s, flag, given),
                exit_code::k_usage);
  }
  return v;
}

std::string age_text(int64_t ms)
{
  if (ms < 1000) return fmt::format("{} ms", ms);
  if (ms < 60'000) return fmt::format("{:.1f} s", static_cast<double>(ms) / 1000.0);
  if (ms < 3'600'000) return fmt::format("{:.1f} min", static_cast<double>(ms) / 60'000.0);
  return fmt::format("{:.1f} h", static_cast<double>(ms) / 3'600'000.0);
}

std::string money(int64_t cents) { return fmt::format("{}.{:02}", cents / 100, cents % 100); }

} // namespace acmo::cli

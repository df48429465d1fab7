// How the command line talks to people and scripts (docs/commands.md §2).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/util/error.hpp"

namespace acmo::cli {

bool stdout_is_tty();
bool stdin_is_tty();
// Colour only on a TTY and not with NO_COLOR.
bool use_colour();

// Print "acmo: error: MESSAGE" on stderr.
void print_error(std::string_view message);
// Print an Error and return its exit code.
int report(const Error& error);

// One JSON document on a line of its own on stdout.
void print_json(const nlohmann::json& doc);

// Print rows of (label, value) aligned in two columns.
void print_table(const std::vector<std::pair<std::string, std::string>>& rows);

// The seconds of a flag with an optional attached value, "--wait" or "--wait=SECS": `given` is
// what CLI11 stored ("" without the flag → 0, "true" without a value → `default_s`). A value
// that is not a whole number from 1 to `max_s` throws Fatal (exit 2).
int64_t parse_seconds_flag(std::string_view flag, const std::string& given, int64_t default_s,
                           int64_t max_s);

// A length of time for people: "250 ms", "4.2 s", "3.5 min", "2.0 h".
std::string age_text(int64_t ms);

// Money for people: integer cents as "12.50".
std::string money(int64_t cents);

// Ask a yes/no question on the terminal; false unless the answer starts with y or Y.
bool confirm(std::string_view question);

} // namespace acmo::cli

// What to tell a user whose command line CLI11 refused: which command it was, what is wrong
// in words of that command (a misspelt subcommand or flag gets a suggestion), and where its
// help is. CLI11's own messages ("A subcommand is required", "Could not convert: ...") name
// neither the command nor what to do.
#pragma once

#include <string>

namespace CLI {
class App;
class ParseError;
} // namespace CLI

namespace acmo::cli {

struct UsageError {
  std::string message; // printed after "acmo: error: "
  std::string help;    // the command whose --help to point at: "acmo", "acmo orders get"
};

// `app` is the parsed-into application, after `e` was thrown from its parse of argv.
UsageError explain_parse_error(const CLI::App& app, const CLI::ParseError& e, int argc,
                               char** argv);

} // namespace acmo::cli

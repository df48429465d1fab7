#include "cli/usage_error.hpp"

#include <cctype>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "core/util/suggest.hpp"

namespace acmo::cli {

namespace {

// "list, show, redrive or purge"
std::string spoken_list(const std::vector<std::string>& names, std::string_view last = " or ")
{
  std::string text;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) text += i + 1 == names.size() ? last : ", ";
    text += names[i];
  }
  return text;
}

std::vector<std::string> subcommand_names(const CLI::App& cmd)
{
  std::vector<std::string> names;
  for (const CLI::App* sub : cmd.get_subcommands([](const CLI::App*) { return true; })) {
    names.push_back(sub->get_name());
  }
  return names;
}

// The option named `flag` ("--limit", "-q") of `cmd` or of a command above it (global options
// may follow a subcommand); nullptr if there is none.
const CLI::Option* find_option(const CLI::App* cmd, const std::string& flag)
{
  for (; cmd != nullptr; cmd = cmd->get_parent()) {
    if (const CLI::Option* opt = cmd->get_option_no_throw(flag)) return opt;
  }
  return nullptr;
}

// Every "--long" flag `cmd` accepts, its own and those of the commands above it.
std::vector<std::string> long_flags(const CLI::App* cmd)
{
  std::vector<std::string> flags;
  for (; cmd != nullptr; cmd = cmd->get_parent()) {
    for (const CLI::Option* opt : cmd->get_options()) {
      for (const auto& name : opt->get_lnames()) flags.push_back("--" + name);
    }
  }
  return flags;
}

// The words of argv that are neither flags nor the values of flags, in order: the command
// path and positional arguments ("acmo --data-dir d dlq lst" → dlq, lst).
std::vector<std::string> positional_words(const CLI::App& app, int argc, char** argv)
{
  std::vector<std::string> words;
  const CLI::App* cmd = &app;
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word == "--") {
      for (++i; i < argc; ++i) words.emplace_back(argv[i]);
      break;
    }
    if (word.size() > 1 && word[0] == '-') {
      if (word.find('=') != std::string::npos) continue;
      const CLI::Option* opt = find_option(cmd, word);
      if (opt != nullptr && opt->get_items_expected_min() > 0) ++i; // its value
      continue;
    }
    words.push_back(word);
    for (const CLI::App* sub : cmd->get_subcommands([](const CLI::App*) { return true; })) {
      if (sub->get_name() == word) {
        cmd = sub;
        break;
      }
    }
  }
  return words;
}

std::string upper(std::string text)
{
  for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text;
}

// What follows "prefix" in `text`, or empty when `text` does not start with it.
std::string after(const std::string& text, std::string_view prefix)
{
  return text.rfind(prefix, 0) == 0 ? text.substr(prefix.size()) : std::string();
}

UsageError unknown_subcommand(const std::string& path, const CLI::App& cmd,
                              const std::string& word)
{
  const auto names = subcommand_names(cmd);
  std::string message = path == "acmo"
                          ? fmt::format("'{}' is not an acmo command", word)
                          : fmt::format("'{}' is not a subcommand of '{}'", word, path);
  if (const std::string guess = closest_name(word, names); !guess.empty()) {
    message += fmt::format("; did you mean '{}'?", guess);
  } else {
    message += fmt::format("; its subcommands are {}", spoken_list(names, " and "));
  }
  return {message, path};
}

UsageError unexpected_word(const std::string& path, const CLI::App& cmd, const std::string& word)
{
  if (word.size() > 1 && word[0] == '-') {
    const std::string flag = word.substr(0, word.find('='));
    std::string message = fmt::format("'{}' has no option {}", path, flag);
    if (flag.rfind("--", 0) == 0) {
      if (const std::string guess = closest_name(flag, long_flags(&cmd)); !guess.empty()) {
        message += fmt::format("; did you mean {}?", guess);
      }
    }
    return {message, path};
  }
  if (!subcommand_names(cmd).empty()) return unknown_subcommand(path, cmd, word);
  return {fmt::format("'{}' does not take the argument '{}'", path, word), path};
}

} // namespace

UsageError explain_parse_error(const CLI::App& app, const CLI::ParseError& e, int argc,
                               char** argv)
{
  // The command the parse reached, e.g. "acmo orders get".
  const CLI::App* cmd = &app;
  std::string path = "acmo";
  for (;;) {
    const auto parsed = cmd->get_subcommands();
    if (parsed.empty()) break;
    cmd = parsed.front();
    path += " " + cmd->get_name();
  }
  const std::string what = e.what();
  const std::string kind = e.get_name();

  // The words typed after that command's name: where a missing subcommand was misspelt.
  std::vector<std::string> words = positional_words(app, argc, argv);
  size_t depth = 0;
  for (const CLI::App* c = cmd; c != &app; c = c->get_parent()) ++depth;
  const std::string next_word = words.size() > depth ? words[depth] : std::string();

  if (kind == "RequiredError" && what == "A subcommand is required") {
    if (!next_word.empty()) return unknown_subcommand(path, *cmd, next_word);
    // "acmo -x": CLI11 misses the subcommand before it gets to the unknown flag.
    for (int i = 1; i < argc; ++i) {
      const std::string word = argv[i];
      const bool flag =
        word.rfind("--", 0) == 0 ? word.size() > 2 : word.size() == 2 && word[0] == '-';
      if (flag && find_option(cmd, word.substr(0, word.find('='))) == nullptr) {
        return unexpected_word(path, *cmd, word);
      }
    }
    return {fmt::format("'{}' needs a subcommand: {}", path, spoken_list(subcommand_names(*cmd))),
            path};
  }
  // CLI11 names an ExtrasError after the command that threw it, so go by the message.
  {
    std::string extra = after(what, "The following argument was not expected: ");
    if (extra.empty()) extra = after(what, "The following arguments were not expected: ");
    // CLI11 lists the extras last first.
    std::vector<std::string> extras;
    for (size_t start = 0; start < extra.size();) {
      const size_t end = std::min(extra.find(' ', start), extra.size());
      if (end > start) extras.push_back(extra.substr(start, end - start));
      start = end + 1;
    }
    if (!extras.empty()) {
      const std::string& word = extras.back();
      // "--watch soon": a flag whose value is optional ("[=SECS]") takes a number after it
      // (join_flag_values in app.cpp), or a value attached with '='.
      for (int i = 2; i < argc; ++i) {
        const std::string flag = argv[i - 1];
        if (word != argv[i] || flag.rfind("--", 0) != 0) continue;
        const CLI::Option* opt = find_option(cmd, flag);
        if (opt != nullptr && opt->get_option_text().rfind("[=", 0) == 0) {
          return {fmt::format("{}: '{}' is not a number of seconds, nor an argument of '{}'",
                              flag, word, path),
                  path};
        }
      }
      // After "--" every word is an argument, whatever it looks like.
      for (int i = 1; i + 1 < argc; ++i) {
        if (std::string_view(argv[i]) != "--") continue;
        for (int j = i + 1; j < argc; ++j) {
          if (word == argv[j]) {
            return {fmt::format("'{}' does not take the argument '{}' (after --, every word is "
                                "an argument)",
                                path, word),
                    path};
          }
        }
      }
      return unexpected_word(path, *cmd, word);
    }
  }
  if (kind == "RequiredError") {
    if (std::string name = what.substr(0, what.rfind(" is required")); name != what) {
      if (!name.empty() && name[0] != '-') {
        return {fmt::format("'{}' needs its {} argument", path, upper(name)), path};
      }
      return {fmt::format("'{}' needs {}", path, name), path};
    }
  }
  if (kind == "ConversionError") {
    // "Could not convert: --limit = abc"
    const std::string rest = after(what, "Could not convert: ");
    const size_t eq = rest.find(" = ");
    if (eq != std::string::npos) {
      const std::string flag = rest.substr(0, eq);
      const std::string value = rest.substr(eq + 3);
      const CLI::Option* opt = find_option(cmd, flag);
      const std::string type = opt != nullptr ? opt->get_type_name() : std::string();
      const bool whole = type == "INT" || type == "UINT" || type == "N";
      return {fmt::format("{}: \"{}\" is not {}", flag, value,
                          whole ? "a whole number" : "a value it takes"),
              path};
    }
  }
  if (kind == "ArgumentMismatch") {
    // "--data: 1 required TEXT missing"; "--data: At Most 1 required but received 2"
    const size_t colon = what.find(": ");
    if (colon != std::string::npos && what.find(": At Most ") == colon) {
      return {fmt::format("{} is given more than once; give it once", what.substr(0, colon)),
              path};
    }
    if (colon != std::string::npos && what.find(" required ") != std::string::npos) {
      const std::string flag = what.substr(0, colon);
      const CLI::Option* opt = find_option(cmd, flag);
      std::string value = opt != nullptr ? opt->get_option_text() : std::string();
      if (value.empty() && opt != nullptr) value = opt->get_type_name();
      return {fmt::format("{} needs a value{}", flag, value.empty() ? "" : ": " + value), path};
    }
  }
  return {what, path};
}

} // namespace acmo::cli

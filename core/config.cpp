#include "core/config.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <functional>

#include <fmt/core.h>
#include <toml++/toml.h>

namespace acmo {

namespace {

// The one table of configuration keys.
const std::vector<ConfigKey> k_keys = {
  {"data_dir", KeyType::string, R"("")",
   "directory for the queue database (default $XDG_STATE_HOME/acmo, else ~/.local/state/acmo)"},
  {"queue.name", KeyType::string, R"("orders")", "the queue's name"},
  {"queue.dlq_name", KeyType::string, R"("orders-dlq")", "the name of its dead-letter queue"},
  {"queue.durability", KeyType::choice, R"("full")",
   "full: every accepted send is fsynced before the answer; normal: it survives a crash of any "
   "process, not a power cut",
   "full|normal"},
  {"queue.visibility_timeout", KeyType::duration, R"("30s")",
   "how long a received message stays hidden before it is delivered again"},
  {"queue.dedup_window", KeyType::duration, R"("5m")",
   "how long a deduplication id is remembered"},
  {"queue.content_based_dedup", KeyType::boolean, "true",
   "use the SHA-256 of the body as the deduplication id when a send has none"},
  {"queue.retry_delays", KeyType::duration_list, R"(["1s", "5s", "15s"])",
   "delay before retry N after a transient failure (the last one repeats)"},
  {"queue.max_retries", KeyType::integer, "3",
   "retries after the first failed attempt before a message goes to the DLQ"},
  {"queue.retention", KeyType::duration, R"("4d")", "messages older than this are dropped"},
  {"queue.group_by", KeyType::choice, R"("single")",
   "single: every event in the group \"orders\" (as the seed); order: one group per order id",
   "single|order"},
  {"queue.busy_timeout", KeyType::duration, R"("30s")",
   "how long to wait for another process's write lock before giving up"},
  {"queue.poll_interval", KeyType::duration, R"("5ms")",
   "how often an idle receiver looks for messages sent by other processes"},
};

const ConfigKey* find_key(std::string_view name)
{
  for (const auto& k : k_keys) {
    if (name == k.name) return &k;
  }
  return nullptr;
}

const char* type_word(KeyType type)
{
  switch (type) {
  case KeyType::string: return "a string";
  case KeyType::boolean: return "true or false";
  case KeyType::integer: return "a whole number";
  case KeyType::duration: return "a duration such as \"30s\", \"500ms\" or \"5m\"";
  case KeyType::duration_list: return "a list of durations such as [\"1s\", \"5s\"]";
  case KeyType::choice: return "one of";
  }
  return "a value";
}

Expected<ConfigValue> check_choice(const ConfigKey& key, std::string value)
{
  if (key.type == KeyType::choice) {
    std::string_view choices = key.choices;
    size_t start = 0;
    while (start <= choices.size()) {
      size_t bar = choices.find('|', start);
      if (bar == std::string_view::npos) bar = choices.size();
      if (choices.substr(start, bar - start) == value) return ConfigValue(std::move(value));
      start = bar + 1;
    }
    std::string list(choices);
    std::replace(list.begin(), list.end(), '|', ' ');
    return make_error(Errc::invalid_input,
                      fmt::format("\"{}\" is not one of: {}", value, list), key.name);
  }
  return ConfigValue(std::move(value));
}

// A value from text (an environment variable, or a default).
Expected<ConfigValue> parse_text(const ConfigKey& key, std::string_view text)
{
  switch (key.type) {
  case KeyType::string:
  case KeyType::choice: return check_choice(key, std::string(text));
  case KeyType::boolean:
    if (text == "true" || text == "1" || text == "yes" || text == "on") return ConfigValue(true);
    if (text == "false" || text == "0" || text == "no" || text == "off") return ConfigValue(false);
    return make_error(Errc::invalid_input, fmt::format("\"{}\" is not true or false", text), key.name);
  case KeyType::integer: {
    char* end = nullptr;
    std::string copy(text);
    long long v = std::strtoll(copy.c_str(), &end, 10);
    if (copy.empty() || *end != '\0') {
      return make_error(Errc::invalid_input, fmt::format("\"{}\" is not a whole number", text),
                        key.name);
    }
    return ConfigValue(static_cast<int64_t>(v));
  }
  case KeyType::duration: {
    auto ms = parse_duration(text);
    if (!ms) return Unexpected(ms.error());
    return ConfigValue(*ms);
  }
  case KeyType::duration_list: {
    std::vector<int64_t> out;
    size_t start = 0;
    while (start < text.size()) {
      size_t comma = text.find(',', start);
      if (comma == std::string_view::npos) comma = text.size();
      auto item = text.substr(start, comma - start);
      while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
      while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
      auto ms = parse_duration(item);
      if (!ms) return Unexpected(ms.error());
      out.push_back(*ms);
      start = comma + 1;
    }
    return ConfigValue(std::move(out));
  }
  }
  return make_error(Errc::internal, "unknown key type", key.name);
}

// A value from a TOML node.
Expected<ConfigValue> parse_node(const ConfigKey& key, const toml::node& node)
{
  auto wrong = [&] {
    std::string want = type_word(key.type);
    if (key.type == KeyType::choice) want += fmt::format(" {}", key.choices);
    return make_error(Errc::invalid_input, fmt::format("must be {}", want), key.name);
  };
  switch (key.type) {
  case KeyType::string:
  case KeyType::choice:
    if (!node.is_string()) return wrong();
    return check_choice(key, *node.value<std::string>());
  case KeyType::boolean:
    if (!node.is_boolean()) return wrong();
    return ConfigValue(*node.value<bool>());
  case KeyType::integer:
    if (!node.is_integer()) return wrong();
    return ConfigValue(*node.value<int64_t>());
  case KeyType::duration: {
    if (!node.is_string()) return wrong();
    auto ms = parse_duration(*node.value<std::string>());
    if (!ms) return Unexpected(ms.error());
    return ConfigValue(*ms);
  }
  case KeyType::duration_list: {
    const auto* array = node.as_array();
    if (array == nullptr) return wrong();
    std::vector<int64_t> out;
    for (const auto& item : *array) {
      if (!item.is_string()) return wrong();
      auto ms = parse_duration(*item.value<std::string>());
      if (!ms) return Unexpected(ms.error());
      out.push_back(*ms);
    }
    return ConfigValue(std::move(out));
  }
  }
  return wrong();
}

std::string position(const std::string& file, const toml::source_region& where)
{
  return fmt::format("{}:{}:{}", file, where.begin.line, where.begin.column);
}

Expected<void> read_file(const std::string& file, Config& config)
{
  toml::table root;
  try {
    root = toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    return make_error(Errc::invalid_input,
                      fmt::format("{}: {}", position(file, e.source()), e.description()));
  }
  Expected<void> result;
  // Walk every leaf; a key acmo does not know is an error, not a silent no-op.
  std::function<bool(const toml::table&, const std::string&)> walk =
    [&](const toml::table& table, const std::string& prefix) {
      for (const auto& [name, node] : table) {
        const std::string full = prefix.empty() ? std::string(name.str())
                                                : prefix + "." + std::string(name.str());
        if (const auto* sub = node.as_table()) {
          if (!walk(*sub, full)) return false;
          continue;
        }
        const ConfigKey* key = find_key(full);
        if (key == nullptr) {
          result = make_error(Errc::invalid_input,
                              fmt::format("{}: unknown key {}; `acmo config show` lists the keys",
                                          position(file, node.source()), full),
                              full);
          return false;
        }
        auto value = parse_node(*key, node);
        if (!value) {
          result = make_error(Errc::invalid_input,
                              fmt::format("{}: {}: {}", position(file, node.source()), full,
                                          value.error().message),
                              full);
          return false;
        }
        config.set(full, ConfigEntry{std::move(*value),
                                     fmt::format("{}:{}", file, node.source().begin.line)});
      }
      return true;
    };
  walk(root, "");
  return result;
}

std::string getenv_string(const char* name)
{
  const char* v = std::getenv(name);
  return v ? v : "";
}

} // namespace

const std::vector<ConfigKey>& config_keys() { return k_keys; }

std::string env_name(const ConfigKey& key)
{
  std::string out = "ACMO_";
  for (const char* p = key.name; *p; ++p) {
    out += *p == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(*p)));
  }
  return out;
}

Expected<int64_t> parse_duration(std::string_view text)
{
  size_t i = 0;
  int64_t value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    if (value > 1'000'000'000'000) break;
    value = value * 10 + (text[i] - '0');
    ++i;
  }
  auto unit = text.substr(i);
  int64_t scale = 0;
  if (unit == "ms") scale = 1;
  else if (unit == "s") scale = 1000;
  else if (unit == "m") scale = 60'000;
  else if (unit == "h") scale = 3'600'000;
  else if (unit == "d") scale = 86'400'000;
  if (i == 0 || scale == 0 || value > 1'000'000'000'000) {
    return make_error(Errc::invalid_input,
                      fmt::format("\"{}\" is not a duration; write a whole number and a unit: "
                                  "\"500ms\", \"30s\", \"5m\", \"2h\" or \"4d\"",
                                  text));
  }
  return value * scale;
}

std::string format_value(const ConfigKey& key, const ConfigValue& value)
{
  auto duration = [](int64_t ms) {
    if (ms != 0 && ms % 86'400'000 == 0) return fmt::format("\"{}d\"", ms / 86'400'000);
    if (ms != 0 && ms % 3'600'000 == 0) return fmt::format("\"{}h\"", ms / 3'600'000);
    if (ms != 0 && ms % 60'000 == 0) return fmt::format("\"{}m\"", ms / 60'000);
    if (ms != 0 && ms % 1000 == 0) return fmt::format("\"{}s\"", ms / 1000);
    return fmt::format("\"{}ms\"", ms);
  };
  switch (key.type) {
  case KeyType::string:
  case KeyType::choice: return fmt::format("\"{}\"", std::get<std::string>(value));
  case KeyType::boolean: return std::get<bool>(value) ? "true" : "false";
  case KeyType::integer: return std::to_string(std::get<int64_t>(value));
  case KeyType::duration: return duration(std::get<int64_t>(value));
  case KeyType::duration_list: {
    std::string out = "[";
    for (auto ms : std::get<std::vector<int64_t>>(value)) {
      if (out.size() > 1) out += ", ";
      out += duration(ms);
    }
    return out + "]";
  }
  }
  return "";
}

const ConfigEntry& Config::entry(const std::string& key) const
{
  auto it = m_entries.find(key);
  if (it == m_entries.end()) throw Fatal("internal error: no configuration key " + key);
  return it->second;
}

const std::string& Config::get_string(const std::string& key) const
{
  return std::get<std::string>(entry(key).value);
}

bool Config::get_bool(const std::string& key) const { return std::get<bool>(entry(key).value); }

int64_t Config::get_int(const std::string& key) const { return std::get<int64_t>(entry(key).value); }

const std::vector<int64_t>& Config::get_list(const std::string& key) const
{
  return std::get<std::vector<int64_t>>(entry(key).value);
}

std::vector<std::string> default_config_search_path()
{
  std::vector<std::string> out = {"acmo.toml"};
  if (auto xdg = getenv_string("XDG_CONFIG_HOME"); !xdg.empty()) {
    out.push_back(xdg + "/acmo/acmo.toml");
  } else if (auto home = getenv_string("HOME"); !home.empty()) {
    out.push_back(home + "/.config/acmo/acmo.toml");
  }
  out.emplace_back("/etc/acmo/acmo.toml");
  return out;
}

Expected<Config> load_config(const ConfigSources& sources)
{
  Config config;
  for (const auto& key : k_keys) {
    // Defaults are written in TOML, as in the docs; parse them the same way as a file.
    auto doc = toml::parse(fmt::format("v = {}", key.default_value));
    auto value = parse_node(key, *doc.get("v"));
    if (!value) throw Fatal(fmt::format("internal error: bad default for {}", key.name));
    config.set(key.name, ConfigEntry{std::move(*value), "default"});
  }

  std::string file = sources.explicit_file;
  if (file.empty() && sources.use_environment) file = getenv_string("ACMO_CONFIG");
  std::error_code ec;
  if (!file.empty()) {
    if (!std::filesystem::is_regular_file(file, ec)) {
      return make_error(Errc::invalid_input,
                        fmt::format("the configuration file {} does not exist or is not a file",
                                    file),
                        "config");
    }
  } else {
    for (const auto& candidate : sources.search_path) {
      if (std::filesystem::is_regular_file(candidate, ec)) {
        file = candidate;
        break;
      }
    }
  }
  if (!file.empty()) {
    if (auto ok = read_file(file, config); !ok) return Unexpected(ok.error());
    config.set_file(file);
  }

  if (sources.use_environment) {
    for (const auto& key : k_keys) {
      const std::string name = env_name(key);
      const char* text = std::getenv(name.c_str());
      if (text == nullptr || *text == '\0') continue;
      auto value = parse_text(key, text);
      if (!value) {
        return make_error(Errc::invalid_input,
                          fmt::format("environment variable {}: {}", name, value.error().message),
                          key.name);
      }
      config.set(key.name, ConfigEntry{std::move(*value), "env " + name});
    }
  }
  return config;
}

QueueOptions queue_options_from(const Config& config)
{
  QueueOptions o;
  o.name = config.get_string("queue.name");
  // A queue named by hand gets a DLQ of its own unless one is named too.
  o.dlq_name = config.entry("queue.dlq_name").source == "default" ? o.name + "-dlq"
                                                                   : config.get_string("queue.dlq_name");
  o.durability_full = config.get_string("queue.durability") == "full";
  o.visibility_timeout_ms = config.get_int("queue.visibility_timeout");
  o.dedup_window_ms = config.get_int("queue.dedup_window");
  o.content_based_dedup = config.get_bool("queue.content_based_dedup");
  o.retry_delays_ms = config.get_list("queue.retry_delays");
  o.max_retries = static_cast<int>(config.get_int("queue.max_retries"));
  o.retention_ms = config.get_int("queue.retention");
  o.busy_timeout_ms = config.get_int("queue.busy_timeout");
  o.poll_interval_ms = config.get_int("queue.poll_interval");
  return o;
}

} // namespace acmo

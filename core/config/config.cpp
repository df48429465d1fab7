#include "core/config/config.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <type_traits>
#include <utility>

#include <unistd.h>

#include <fmt/core.h>
#include <toml++/toml.h>

#include "core/cache/redis_cache.hpp"
#include "core/queue/postgres/pg_queue.hpp"
#include "core/store/pg_conninfo.hpp"
#include "core/util/suggest.hpp"

namespace acmo {

namespace {

// The member at the end of a path of member pointers: object.*first.*rest...
template <auto First, auto... Rest>
auto& member(auto& object)
{
  if constexpr (sizeof...(Rest) == 0) {
    return object.*First;
  } else {
    return member<Rest...>(object.*First);
  }
}

// A value of a key's type into a field of Settings (integers and durations may be narrower
// than int64_t: the ranges keep them within it) and back.
template <typename T>
void assign(T& target, const ConfigValue& value)
{
  if constexpr (std::is_same_v<T, bool>) {
    target = std::get<bool>(value);
  } else if constexpr (std::is_integral_v<T>) {
    target = static_cast<T>(std::get<int64_t>(value));
  } else {
    target = std::get<T>(value);
  }
}

template <typename T>
ConfigValue value_of(const T& source)
{
  if constexpr (std::is_same_v<T, bool>) {
    return ConfigValue(std::in_place_type<bool>, source);
  } else if constexpr (std::is_integral_v<T>) {
    return ConfigValue(std::in_place_type<int64_t>, static_cast<int64_t>(source));
  } else {
    return ConfigValue(source);
  }
}

// The field of Settings at a path of member pointers: field<&Settings::queue,
// &QueueOptions::max_retries>() is settings.queue.max_retries.
template <auto... Path>
ConfigField field()
{
  return {[](Settings& s, const ConfigValue& v) { assign(member<Path...>(s), v); },
          [](const Settings& s) { return value_of(member<Path...>(s)); }};
}

// The one table of configuration keys: name, type, default, description, the field of Settings
// it fills, the range of an integer or duration, the choices, what is secret.
const std::vector<ConfigKey> k_keys = {
  {"data_dir", KeyType::string, R"("")",
   "directory for the queue database (default $XDG_STATE_HOME/acmo, else ~/.local/state/acmo)",
   field<&Settings::data_dir>()},
  {"queue.backend", KeyType::choice, R"("sqlite")",
   "sqlite: the queue in the data dir's database, for one host; postgres: in PostgreSQL at "
   "queue.url, shared by every host",
   field<&Settings::queue_backend, &QueueBackendSettings::backend>(), {}, "sqlite|postgres"},
  {"queue.url", KeyType::string, R"("")",
   "the PostgreSQL connection URL of the queue; empty: store.url",
   field<&Settings::queue_backend, &QueueBackendSettings::url>(), {}, "", Secret::url},
  {"queue.schema", KeyType::string, R"("acmo")",
   "the PostgreSQL schema that holds the queue's tables (created and migrated by acmo)",
   field<&Settings::queue_backend, &QueueBackendSettings::schema>()},
  {"queue.name", KeyType::string, R"("orders")",
   "the queue's name",
   field<&Settings::queue, &QueueOptions::name>()},
  {"queue.dlq_name", KeyType::string, R"("orders-dlq")",
   "the name of its dead-letter queue",
   field<&Settings::queue, &QueueOptions::dlq_name>()},
  {"queue.durability", KeyType::choice, R"("full")",
   "full: every accepted send is fsynced before the answer; normal: it survives a crash of any "
   "process, not a power cut",
   {[](Settings& s, const ConfigValue& v) {
      s.queue.durability_full = std::get<std::string>(v) == "full";
    },
    [](const Settings& s) {
      return ConfigValue(std::string(s.queue.durability_full ? "full" : "normal"));
    }},
   {}, "full|normal"},
  {"queue.visibility_timeout", KeyType::duration, R"("30s")",
   "how long a received message stays hidden before it is delivered again",
   field<&Settings::queue, &QueueOptions::visibility_timeout_ms>(), {0, 12 * 3'600'000}},
  {"queue.dedup_window", KeyType::duration, R"("5m")",
   "how long a deduplication id is remembered",
   field<&Settings::queue, &QueueOptions::dedup_window_ms>()},
  {"queue.content_based_dedup", KeyType::boolean, "true",
   "use the SHA-256 of the body as the deduplication id when a send has none",
   field<&Settings::queue, &QueueOptions::content_based_dedup>()},
  {"queue.retry_delays", KeyType::duration_list, R"(["1s", "5s", "15s"])",
   "delay before retry N after a transient failure (the last one repeats)",
   field<&Settings::queue, &QueueOptions::retry_delays_ms>()},
  {"queue.max_retries", KeyType::integer, "3",
   "retries after the first failed attempt before a message goes to the DLQ",
   field<&Settings::queue, &QueueOptions::max_retries>(), {0, 1000}},
  {"queue.retention", KeyType::duration, R"("4d")",
   "messages older than this are dropped",
   field<&Settings::queue, &QueueOptions::retention_ms>()},
  {"queue.group_by", KeyType::choice, R"("single")",
   "single: every event in the group \"orders\" (as the seed); order: one group per order id",
   field<&Settings::group_by>(), {}, "single|order"},
  {"queue.busy_timeout", KeyType::duration, R"("30s")",
   "how long to wait for another process's write lock before giving up",
   field<&Settings::queue, &QueueOptions::busy_timeout_ms>()},
  {"queue.poll_interval", KeyType::duration, R"("5ms")",
   "how often an idle receiver looks for messages sent by other processes",
   field<&Settings::queue, &QueueOptions::poll_interval_ms>()},
  {"handler.concurrency", KeyType::integer, "1",
   "worker threads of a handler; they work on different groups in parallel",
   field<&Settings::handler, &HandlerOptions::concurrency>(), {1, 64}},
  {"handler.batch_size", KeyType::integer, "100",
   "messages a worker receives at once (1-1000)",
   field<&Settings::handler, &HandlerOptions::batch_size>(), {1, 1000}},
  {"handler.wait", KeyType::duration, R"("1s")",
   "how long an idle worker's long poll waits for a message (at most 20s)",
   field<&Settings::handler, &HandlerOptions::wait_ms>(), {0, 20'000}},
  {"store.backend", KeyType::choice, R"("sqlite")",
   "sqlite: orders in the queue's database; postgres: orders in PostgreSQL at store.url",
   field<&Settings::store, &StoreSettings::backend>(), {}, "sqlite|postgres"},
  {"store.url", KeyType::string, R"("")",
   "the PostgreSQL connection URL, e.g. \"postgresql://acmo@127.0.0.1:5432/acmo\"",
   field<&Settings::store, &StoreSettings::postgres, &PgOptions::url>(), {}, "", Secret::url},
  {"store.pool_size", KeyType::integer, "4",
   "PostgreSQL connections a process keeps at most",
   field<&Settings::store, &StoreSettings::postgres, &PgOptions::pool_size>(), {1, 64}},
  {"store.connect_timeout", KeyType::duration, R"("5s")",
   "how long to wait for PostgreSQL to answer a new connection",
   field<&Settings::store, &StoreSettings::postgres, &PgOptions::connect_timeout_ms>(),
   {1, 600'000}},
  {"cache.backend", KeyType::choice, R"("memory")",
   "memory: an LRU in each process; redis: shared, in Redis at cache.url; none: no cache",
   field<&Settings::cache, &CacheSettings::backend>(), {}, "memory|redis|none"},
  {"cache.url", KeyType::string, R"("redis://127.0.0.1:6379")",
   "the Redis server's URL",
   field<&Settings::cache, &CacheSettings::redis, &RedisCacheOptions::url>(), {}, "", Secret::url},
  {"cache.prefix", KeyType::string, R"("acmo:")",
   "the prefix of every Redis key acmo writes; cache clear removes only these",
   field<&Settings::cache, &CacheSettings::redis, &RedisCacheOptions::prefix>()},
  {"cache.ttl", KeyType::duration, R"("60s")",
   "how long a cached order or list is kept",
   field<&Settings::cache, &CacheSettings::ttl_ms>(), {1, 30LL * 86'400'000}},
  {"cache.capacity", KeyType::integer, "10000",
   "entries the memory cache keeps at most",
   field<&Settings::cache, &CacheSettings::capacity>(), {1, 100'000'000}},
  {"cache.max_bytes", KeyType::integer, "67108864",
   "bytes the memory cache keeps at most, keys and values (64 MiB)",
   field<&Settings::cache, &CacheSettings::max_bytes>(), {4096, 1LL << 40}},
  {"cache.timeout", KeyType::duration, R"("100ms")",
   "how long to wait for Redis before a read falls back to the store",
   field<&Settings::cache, &CacheSettings::redis, &RedisCacheOptions::timeout_ms>(), {1, 60'000}},
  {"server.listen", KeyType::string, R"("127.0.0.1:3000")",
   "HOST:PORT acmo serve listens on",
   field<&Settings::listen>()},
  {"server.threads", KeyType::integer, "64",
   "threads that answer HTTP requests at once (a connection holds one only while answered)",
   field<&Settings::server, &ServerOptions::threads>(), {1, 1024}},
  {"server.max_body", KeyType::integer, "1048576",
   "largest request body in bytes (413 above)",
   field<&Settings::server, &ServerOptions::max_body>(), {1, 1LL << 30}},
  {"server.read_timeout", KeyType::duration, R"("5s")",
   "how long a request may take to arrive whole, from its first byte (408 after)",
   field<&Settings::server, &ServerOptions::read_timeout_ms>(), {1, 3'600'000}},
  {"server.write_timeout", KeyType::duration, R"("5s")",
   "how long an answer may take to be sent",
   field<&Settings::server, &ServerOptions::write_timeout_ms>(), {1, 3'600'000}},
  {"server.keep_alive_timeout", KeyType::duration, R"("5s")",
   "how long an idle keep-alive connection stays open",
   field<&Settings::server, &ServerOptions::keep_alive_timeout_ms>(), {1, 3'600'000}},
  {"server.keep_alive_max", KeyType::integer, "1000",
   "requests on one connection at most",
   field<&Settings::server, &ServerOptions::keep_alive_max>(), {1, 1'000'000'000}},
  {"server.backlog_max_age", KeyType::duration, R"("5m")",
   "GET /health is 503 once the oldest waiting message is older than this; 0: no age check",
   field<&Settings::server, &ServerOptions::backlog_max_age_ms>(), {0, 30LL * 86'400'000}},
  {"server.max_connections_per_client", KeyType::integer, "1024",
   "connections one client address may hold open at once (429 above)",
   field<&Settings::server, &ServerOptions::max_connections_per_client>(), {1, 1'000'000}},
  {"server.api_tokens", KeyType::string_list, "[]",
   "bearer tokens for the API; empty: no token needed",
   field<&Settings::server, &ServerOptions::api_tokens>(), {}, "", Secret::whole},
  {"server.admin_tokens", KeyType::string_list, "[]",
   "bearer tokens for purge, cache clear and the DLQ; empty: api tokens suffice",
   field<&Settings::server, &ServerOptions::admin_tokens>(), {}, "", Secret::whole},
  {"server.metrics_tokens", KeyType::string_list, "[]",
   "bearer tokens that read GET /metrics and nothing else (a Prometheus scraper's)",
   field<&Settings::server, &ServerOptions::metrics_tokens>(), {}, "", Secret::whole},
  {"server.metrics_open", KeyType::boolean, "false",
   "true: GET /metrics needs no token (a scraper on a private network)",
   field<&Settings::server, &ServerOptions::metrics_open>()},
  {"server.rate_limit", KeyType::integer, "0",
   "requests per second per valid token, else per client address (0: no limit)",
   field<&Settings::server, &ServerOptions::rate_limit>(), {0, 1'000'000'000}},
  {"server.rate_burst", KeyType::integer, "0",
   "requests a client may make at once above the rate (0: one second's worth)",
   field<&Settings::server, &ServerOptions::rate_burst>(), {0, 1'000'000'000}},
  {"server.handler", KeyType::boolean, "true",
   "run an OrderHandler inside acmo serve (false: as --no-handler)",
   field<&Settings::serve_handler>()},
  {"log.level", KeyType::choice, R"("info")",
   "the least important messages logged",
   field<&Settings::log, &LogSettings::level>(), {}, "error|warn|info|debug"},
  {"log.file", KeyType::string, R"("")",
   "the log file of --daemon (default: the data dir's acmo-COMMAND.log)",
   field<&Settings::log, &LogSettings::file>()},
  {"log.format", KeyType::choice, R"("text")",
   "text: one line per message; json: JSON Lines",
   field<&Settings::log, &LogSettings::format>(), {}, "text|json"},
  {"log.access", KeyType::boolean, "false",
   "acmo serve logs one line per HTTP request (method, path, status, bytes, duration, client)",
   field<&Settings::log, &LogSettings::access>()},
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
  case KeyType::string_list: return "a list of strings such as [\"a\", \"b\"]";
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

// The items of a comma-separated list in an environment variable, spaces around them trimmed.
std::vector<std::string_view> split_list(std::string_view text)
{
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    auto item = text.substr(start, comma - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    out.push_back(item);
    start = comma + 1;
  }
  return out;
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
    for (auto item : split_list(text)) {
      auto ms = parse_duration(item);
      if (!ms) return Unexpected(ms.error());
      out.push_back(*ms);
    }
    return ConfigValue(std::move(out));
  }
  case KeyType::string_list: {
    std::vector<std::string> out;
    for (auto item : split_list(text)) {
      if (!item.empty()) out.emplace_back(item);
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
  case KeyType::string_list: {
    const auto* array = node.as_array();
    if (array == nullptr) return wrong();
    std::vector<std::string> out;
    for (const auto& item : *array) {
      if (!item.is_string()) return wrong();
      out.push_back(*item.value<std::string>());
    }
    return ConfigValue(std::move(out));
  }
  }
  return wrong();
}

// The key a misspelt or misplaced `name` probably meant: the closest name within two edits
// ("queue.visiblity_timeout"), else the key with the same last part in another section
// ("queue.batch_size" → "handler.batch_size"); empty when nothing is that close.
std::string key_like(const std::string& name)
{
  std::vector<std::string> names;
  for (const auto& key : k_keys) names.emplace_back(key.name);
  if (std::string guess = closest_name(name, names); !guess.empty()) return guess;
  const std::string leaf = name.substr(name.rfind('.') + 1);
  for (const auto& key : names) {
    if (key.substr(key.rfind('.') + 1) == leaf) return key;
  }
  return {};
}

// What is wrong with `v`, a value of `key` outside its range.
std::string out_of_range_message(const ConfigKey& key, int64_t v)
{
  auto text = [&key](int64_t n) -> std::string {
    if (key.type != KeyType::duration) return std::to_string(n);
    if (n == 0) return "0s";
    std::string out = format_value(key, ConfigValue(std::in_place_type<int64_t>, n));
    return out.substr(1, out.size() - 2); // without the quotes of TOML
  };
  return fmt::format("{} must be between {} and {}, not {}", key.name, text(key.range.low),
                     text(key.range.high), text(v));
}

// Whether `name` is a section of the keys ("queue" for queue.max_retries).
bool is_section(std::string_view name)
{
  for (const auto& key : k_keys) {
    const std::string_view k = key.name;
    if (k.size() > name.size() && k.substr(0, name.size()) == name && k[name.size()] == '.') {
      return true;
    }
  }
  return false;
}

std::string position(const std::string& file, const toml::source_region& where)
{
  return fmt::format("{}:{}:{}", file, where.begin.line, where.begin.column);
}

// The first line of `file` with more than k_max_dots dots outside quoted strings, as an error.
Expected<void> dotted_line(const std::string& file)
{
  constexpr int k_max_dots = 64;
  std::ifstream in(file, std::ios::binary);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    int dots = 0;
    char quote = 0;
    for (size_t i = 0; i < line.size(); ++i) {
      const char c = line[i];
      if (quote != 0) {
        if (c == '\\' && quote == '"') ++i;
        else if (c == quote) quote = 0;
      } else if (c == '"' || c == '\'') {
        quote = c;
      } else if (c == '#') {
        break;
      } else if (c == '.') {
        ++dots;
      }
    }
    if (dots > k_max_dots) {
      return make_error(Errc::invalid_input,
                        fmt::format("{}:{}: a key of more than {} parts; acmo's keys have two "
                                    "(section.key), `acmo config show` lists them",
                                    file, number, k_max_dots + 1));
    }
  }
  return {};
}

Expected<void> read_file(const std::string& file, Config& config)
{
  // Read whole by the TOML parser: bounded first, so that no file can exhaust the memory.
  constexpr uintmax_t k_max_file = 1 << 20;
  std::error_code ec;
  if (const auto size = std::filesystem::file_size(file, ec); !ec && size > k_max_file) {
    return make_error(Errc::invalid_input,
                      fmt::format("{}: {} bytes, more than a configuration file can be (1 MiB); "
                                  "is it the right file?",
                                  file, size));
  }
  // toml++ makes a table for each part of a dotted key ("a.b.c = 1") and walks them
  // recursively: a key of some hundred thousand parts overflows the stack. acmo's keys have
  // two parts, and a dot outside quotes is otherwise only in a number: a line with more than
  // k_max_dots of them is refused before the parser sees it.
  if (auto dots = dotted_line(file); !dots) return Unexpected(dots.error());
  toml::table root;
  try {
    root = toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    return make_error(Errc::invalid_input,
                      fmt::format("{}: not valid TOML: {}; fix the file there (`acmo config "
                                  "check` checks it)",
                                  position(file, e.source()), e.description()));
  }
  // Walk every leaf; a key acmo does not know is an error, not a silent no-op. Every problem
  // of the file is reported at once, in the file's order (toml++ iterates by key): the first as
  // the error, the others on lines after it.
  std::vector<std::pair<toml::source_position, Error>> problems;
  std::function<void(const toml::table&, const std::string&)> walk =
    [&](const toml::table& table, const std::string& prefix) {
      for (const auto& [name, node] : table) {
        const std::string full = prefix.empty() ? std::string(name.str())
                                                : prefix + "." + std::string(name.str());
        const ConfigKey* key = find_key(full);
        const bool section = is_section(full);
        if (const auto* sub = node.as_table(); sub != nullptr && section) {
          walk(*sub, full); // as deep as the keys go: one level
          continue;
        }
        if (section) {
          problems.emplace_back(
            node.source().begin,
            Error(Errc::invalid_input,
                  fmt::format("{}: {} is a section, not a value; write its keys under [{}] "
                              "(`acmo config show` lists them)",
                              position(file, node.source()), full, full),
                  full));
          continue;
        }
        if (key == nullptr) {
          const std::string guess = key_like(full);
          problems.emplace_back(
            node.source().begin,
            Error(Errc::invalid_input,
                  fmt::format("{}: unknown key {}; {}`acmo config show` lists the keys",
                              position(file, node.source()), full,
                              guess.empty() ? "" : fmt::format("did you mean {}? ", guess)),
                  full));
          continue;
        }
        auto value = parse_node(*key, node);
        if (!value) {
          problems.emplace_back(node.source().begin,
                                Error(Errc::invalid_input,
                                      fmt::format("{}: {}: {}", position(file, node.source()),
                                                  full, value.error().message),
                                      full));
          continue;
        }
        if (const auto* v = std::get_if<int64_t>(&*value);
            v != nullptr && !key->range.none()
            && (*v < key->range.low || *v > key->range.high)) {
          problems.emplace_back(node.source().begin,
                                Error(Errc::invalid_input,
                                      fmt::format("{}: {}", position(file, node.source()),
                                                  out_of_range_message(*key, *v)),
                                      full));
          continue;
        }
        config.set(full, ConfigEntry{std::move(*value),
                                     fmt::format("{}:{}", file, node.source().begin.line)});
      }
    };
  walk(root, "");
  if (problems.empty()) return {};
  std::stable_sort(problems.begin(), problems.end(), [](const auto& a, const auto& b) {
    return std::pair(a.first.line, a.first.column) < std::pair(b.first.line, b.first.column);
  });
  Error first = problems.front().second;
  for (size_t i = 1; i < problems.size(); ++i) {
    first.message += "\n  " + problems[i].second.message;
  }
  if (problems.size() > 1) {
    first.message += fmt::format("\n  ({} problems in {})", problems.size(), file);
  }
  return Unexpected(std::move(first));
}

// A variable that is one letter or two away from a key's (ACMO_QUEUE_VISIBILTY_TIMEOUT) is a
// typo that would leave the key at its default unseen. Other ACMO_ variables are left alone:
// scripts around acmo may have their own.
Expected<void> check_env_names()
{
  std::vector<std::string> names = {"ACMO_CONFIG"};
  for (const auto& key : k_keys) names.push_back(env_name(key));
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry = *e;
    if (entry.rfind("ACMO_", 0) != 0) continue;
    const std::string name(entry.substr(0, entry.find('=')));
    if (std::find(names.begin(), names.end(), name) != names.end()) continue;
    if (const std::string guess = closest_name(name, names); !guess.empty()) {
      return make_error(Errc::invalid_input,
                        fmt::format("environment variable {} is not one acmo reads; did you "
                                    "mean {}? Correct its name, or unset it",
                                    name, guess),
                        name);
    }
  }
  return {};
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

namespace {

// "postgresql://acmo:secret@db/acmo?sslpassword=x" → "postgresql://acmo:***@db/acmo?sslpassword=***",
// "host=db password='a b'" → "host=db password=***".
std::string redact_url(const std::string& url)
{
  std::string out = url;
  if (const auto scheme = out.find("://"); scheme != std::string::npos) {
    const size_t start = scheme + 3;
    const size_t end = std::min(out.find_first_of("/?#", start), out.size());
    const size_t at = out.rfind('@', end == 0 ? 0 : end - 1);
    if (at != std::string::npos && at >= start) {
      const size_t colon = out.find(':', start);
      if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
  }
  static const std::regex password(R"((password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*))",
                                   std::regex::icase);
  return std::regex_replace(out, password, "$1***");
}

} // namespace

ConfigValue redacted(const ConfigKey& key, const ConfigValue& value)
{
  switch (key.secret) {
  case Secret::none:
    return value;
  case Secret::whole:
    if (const auto* list = std::get_if<std::vector<std::string>>(&value)) {
      return std::vector<std::string>(list->size(), "***");
    }
    if (const auto* text = std::get_if<std::string>(&value); text != nullptr && !text->empty()) {
      return std::string("***");
    }
    return value;
  case Secret::url:
    if (const auto* text = std::get_if<std::string>(&value)) return redact_url(*text);
    return value;
  }
  return value;
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
  case KeyType::string_list: {
    std::string out = "[";
    for (const auto& item : std::get<std::vector<std::string>>(value)) {
      if (out.size() > 1) out += ", ";
      out += fmt::format("\"{}\"", item);
    }
    return out + "]";
  }
  }
  return "";
}

void Config::set(const std::string& key, ConfigEntry entry)
{
  const ConfigKey* row = find_key(key);
  if (row == nullptr) throw Fatal("internal error: no configuration key " + key);
  row->field.set(m_settings, entry.value);
  m_entries[key] = std::move(entry);
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

const std::vector<std::string>& Config::get_strings(const std::string& key) const
{
  return std::get<std::vector<std::string>>(entry(key).value);
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
    if (auto ok = check_env_names(); !ok) return Unexpected(ok.error());
  }
  return config;
}

QueueOptions queue_options_from(const Config& config)
{
  QueueOptions o = config.settings().queue;
  // A queue named by hand gets a DLQ of its own unless one is named too.
  if (config.entry("queue.dlq_name").source == "default") o.dlq_name = o.name + "-dlq";
  return o;
}

std::string queue_url(const Settings& settings)
{
  if (!settings.queue_backend.url.empty()) return settings.queue_backend.url;
  return settings.store.postgres.url;
}

bool queue_shares_store_database(const Settings& settings)
{
  return settings.queue_backend.backend == "postgres" && settings.store.backend == "postgres" &&
         queue_url(settings) == settings.store.postgres.url;
}

Expected<ListenAddress> parse_listen(std::string_view text)
{
  const size_t colon = text.rfind(':');
  auto bad = [&] {
    return make_error(Errc::invalid_input,
                      fmt::format("\"{}\" is not HOST:PORT, e.g. \"127.0.0.1:3000\"", text),
                      "server.listen");
  };
  if (colon == std::string_view::npos || colon + 1 == text.size()) return bad();
  ListenAddress out;
  out.host = std::string(text.substr(0, colon));
  if (out.host.empty()) out.host = "0.0.0.0"; // ":3000": every IPv4 address, as in Go and Node
  if (out.host.size() > 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2); // [::1]:3000
  }
  int64_t port = 0;
  for (char c : text.substr(colon + 1)) {
    if (c < '0' || c > '9' || port > 65535) return bad();
    port = port * 10 + (c - '0');
  }
  if (port > 65535) {
    return make_error(Errc::invalid_input,
                      fmt::format("port {} in \"{}\" is above 65535", port, text), "server.listen");
  }
  out.port = static_cast<int>(port);
  return out;
}

Expected<void> check_config(const Config& config)
{
  // Every value out of its range at once, as read_file reports every key it cannot read: the
  // first as the error, the others on lines after it.
  std::optional<Error> out_of_range;
  for (const auto& key : k_keys) {
    if (key.range.none()) continue;
    const int64_t v = std::get<int64_t>(config.entry(key.name).value);
    if (v >= key.range.low && v <= key.range.high) continue;
    std::string message = out_of_range_message(key, v);
    if (!out_of_range) {
      out_of_range.emplace(Errc::invalid_input, std::move(message), key.name);
    } else {
      out_of_range->message +=
        fmt::format("\n  {} (set by {})", message, config.entry(key.name).source);
    }
  }
  if (out_of_range) return Unexpected(std::move(*out_of_range));
  const Settings& s = config.settings();
  if (s.store.backend == "postgres" && s.store.postgres.url.empty()) {
    return make_error(Errc::invalid_input,
                      "store.backend is \"postgres\" but store.url is empty; set it to the "
                      "server's URL, e.g. \"postgresql://acmo@127.0.0.1:5432/acmo\"",
                      "store.backend");
  }
  if (s.store.backend == "postgres") {
    if (auto ok = check_pg_url(s.store.postgres.url, "store.url"); !ok) return ok;
  }
  if (s.queue_backend.backend == "postgres" && !s.queue_backend.url.empty()) {
    if (auto ok = check_pg_url(s.queue_backend.url, "queue.url"); !ok) return ok;
  }
  if (s.queue_backend.backend == "postgres") {
    if (s.store.backend != "postgres") {
      return make_error(Errc::invalid_input,
                        "queue.backend is \"postgres\" but store.backend is \"sqlite\": the "
                        "embedded store lives in the queue's SQLite database; set store.backend "
                        "= \"postgres\" and store.url too",
                        "queue.backend");
    }
    if (!valid_queue_schema(s.queue_backend.schema)) {
      return make_error(Errc::invalid_input,
                        fmt::format("queue.schema \"{}\" is not a schema name acmo takes: 1 to 63 "
                                    "lower-case letters, digits and _, not starting with a digit",
                                    s.queue_backend.schema),
                        "queue.schema");
    }
  }
  if (s.cache.backend == "redis") {
    if (auto address = parse_redis_url(s.cache.redis.url); !address) {
      return make_error(Errc::invalid_input, address.error().message, "cache.url");
    }
    if (s.cache.redis.prefix.empty()) {
      return make_error(Errc::invalid_input,
                        "cache.prefix must not be empty: acmo clears only the keys under it",
                        "cache.prefix");
    }
  }
  if (s.server.metrics_open && !s.server.metrics_tokens.empty()) {
    return make_error(Errc::invalid_input,
                      "server.metrics_open is true, so GET /metrics asks for no token and "
                      "server.metrics_tokens would never be used; empty server.metrics_tokens, "
                      "or set server.metrics_open to false to have the scraper send one",
                      "server.metrics_open");
  }
  if (auto ok = parse_listen(s.listen); !ok) return Unexpected(ok.error());
  return {};
}

} // namespace acmo

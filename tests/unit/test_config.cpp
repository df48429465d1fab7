#include <cstdlib>
#include <fstream>

#include <catch2/catch.hpp>
#include <fmt/core.h>

#include "core/config/backends.hpp"
#include "core/config/config.hpp"
#include "daemon/api.hpp"
#include "daemon/http_server.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::TempDir;

namespace {

std::string write(const TempDir& dir, const std::string& name, const std::string& text)
{
  std::string path = dir.file(name);
  std::ofstream(path) << text;
  return path;
}

Config load(const std::string& file)
{
  ConfigSources sources;
  sources.explicit_file = file;
  sources.use_environment = false;
  auto config = load_config(sources);
  REQUIRE(config);
  return *config;
}

Error load_error(const std::string& file)
{
  ConfigSources sources;
  sources.explicit_file = file;
  sources.use_environment = false;
  auto config = load_config(sources);
  REQUIRE_FALSE(config);
  return config.error();
}

Config defaults()
{
  ConfigSources sources;
  sources.use_environment = false;
  return load_config(sources).value();
}

// A value of the key's type other than `value` (for a choice, another of its choices).
ConfigValue other_value(const ConfigKey& key, const ConfigValue& value)
{
  switch (key.type) {
  case KeyType::string: return std::get<std::string>(value) + "-other";
  case KeyType::choice: {
    std::string_view choices = key.choices;
    const auto first = choices.substr(0, choices.find('|'));
    const auto rest = choices.substr(first.size() + 1);
    const auto second = rest.substr(0, rest.find('|'));
    return std::string(std::get<std::string>(value) == first ? second : first);
  }
  case KeyType::boolean: return !std::get<bool>(value);
  case KeyType::integer:
  case KeyType::duration: return std::get<int64_t>(value) + 1;
  case KeyType::duration_list: return std::vector<int64_t>{7};
  case KeyType::string_list: return std::vector<std::string>{"other"};
  }
  return value;
}

// Restores an environment variable when it goes out of scope.
struct EnvVar {
  std::string name;
  EnvVar(std::string n, const char* value) : name(std::move(n)) { setenv(name.c_str(), value, 1); }
  ~EnvVar() { unsetenv(name.c_str()); }
};

} // namespace

TEST_CASE("Config: durations take ms, s, m, h and d", "[config]")
{
  auto [text, ms] = GENERATE(table<std::string, int64_t>({{"500ms", 500},
                                                          {"1s", 1000},
                                                          {"5m", 300'000},
                                                          {"2h", 7'200'000},
                                                          {"4d", 345'600'000},
                                                          {"0s", 0}}));
  CHECK(parse_duration(text).value() == ms);
}

TEST_CASE("Config: a duration without a unit or with a bad one is refused", "[config]")
{
  auto text = GENERATE(as<std::string>{}, "30", "s", "1.5s", "-1s", "10 s", "5min", "");
  auto ms = parse_duration(text);
  REQUIRE_FALSE(ms);
  CHECK(ms.error().message.find("not a duration") != std::string::npos);
}

TEST_CASE("Config: the defaults give the queue options of docs/queue.md", "[config]")
{
  ConfigSources sources;
  sources.use_environment = false;
  auto config = load_config(sources);
  REQUIRE(config);
  auto o = queue_options_from(*config);
  CHECK(o.name == "orders");
  CHECK(o.dlq_name == "orders-dlq");
  CHECK(o.durability_full);
  CHECK(o.visibility_timeout_ms == 30'000);
  CHECK(o.dedup_window_ms == 300'000);
  CHECK(o.content_based_dedup);
  CHECK(o.retry_delays_ms == std::vector<int64_t>{1000, 5000, 15000});
  CHECK(o.max_retries == 3);
  CHECK(o.retention_ms == 4 * 86'400'000LL);
  CHECK(config->get_string("queue.group_by") == "single");
  CHECK(config->entry("queue.retention").source == "default");
}

TEST_CASE("Config: examples/acmo.toml sets every key, each to its default", "[config]")
{
  const std::string example = std::string(ACMO_SOURCE_DIR) + "/examples/acmo.toml";
  Config from_file = load(example);
  ConfigSources none;
  none.use_environment = false;
  Config defaults = load_config(none).value();
  for (const auto& key : config_keys()) {
    INFO(key.name);
    CHECK(from_file.entry(key.name).source.rfind(example + ":", 0) == 0);
    CHECK(from_file.entry(key.name).value == defaults.entry(key.name).value);
  }
}

TEST_CASE("Config: a file's values reach the queue options, with their line as source",
          "[config]")
{
  TempDir dir;
  auto file = write(dir, "acmo.toml",
                    "data_dir = \"/srv/acmo\"\n"
                    "[queue]\n"
                    "durability = \"normal\"\n"
                    "visibility_timeout = \"2m\"\n"
                    "retry_delays = [\"100ms\", \"2s\"]\n"
                    "max_retries = 5\n");
  Config config = load(file);
  auto o = queue_options_from(config);
  CHECK_FALSE(o.durability_full);
  CHECK(o.visibility_timeout_ms == 120'000);
  CHECK(o.retry_delays_ms == std::vector<int64_t>{100, 2000});
  CHECK(o.max_retries == 5);
  CHECK(config.get_string("data_dir") == "/srv/acmo");
  CHECK(config.entry("queue.max_retries").source == file + ":6");
}

TEST_CASE("Config: errors name the file, line, column and key", "[config]")
{
  TempDir dir;
  SECTION("a value of the wrong type")
  {
    auto file = write(dir, "a.toml", "[queue]\nvisibility_timeout = 30\n");
    auto error = load_error(file);
    CHECK(error.message.find(file + ":2:") == 0);
    CHECK(error.message.find("queue.visibility_timeout") != std::string::npos);
    CHECK(error.field == "queue.visibility_timeout");
  }
  SECTION("a choice that is not offered")
  {
    auto file = write(dir, "a.toml", "[queue]\n\ndurability = \"sometimes\"\n");
    auto error = load_error(file);
    CHECK(error.message.find(file + ":3:") == 0);
    CHECK(error.message.find("full normal") != std::string::npos);
  }
  SECTION("an unknown key")
  {
    auto file = write(dir, "a.toml", "[queue]\nvisibilty_timeout = \"1s\"\n");
    auto error = load_error(file);
    CHECK(error.message.find("unknown key queue.visibilty_timeout; did you mean "
                             "queue.visibility_timeout?") != std::string::npos);
  }
  SECTION("a key in the wrong section")
  {
    auto file = write(dir, "a.toml", "[queue]\nbatch_size = 50\n");
    auto error = load_error(file);
    CHECK(error.message.find("unknown key queue.batch_size; did you mean handler.batch_size?") !=
          std::string::npos);
  }
  SECTION("every problem of a file at once, in the file's order")
  {
    auto file = write(dir, "a.toml",
                      "[queue]\nvisibilty_timeout = \"1s\"\nmax_retries = \"x\"\n[handler]\n"
                      "batch_size = 3\nbogus = 1\n");
    auto error = load_error(file);
    const auto first = error.message.find(file + ":2:");
    const auto second = error.message.find("\n  " + file + ":3:");
    const auto third = error.message.find("\n  " + file + ":6:");
    CHECK(first == 0);
    CHECK(second != std::string::npos);
    CHECK(third != std::string::npos);
    CHECK(second < third);
    CHECK(error.message.find("(3 problems in " + file + ")") != std::string::npos);
    CHECK(error.field == "queue.visibilty_timeout");
  }
  SECTION("an unknown key like none")
  {
    auto file = write(dir, "a.toml", "[queue]\ncolour = \"blue\"\n");
    auto error = load_error(file);
    CHECK(error.message.find("unknown key queue.colour; `acmo config show`") != std::string::npos);
  }
  SECTION("broken TOML")
  {
    auto file = write(dir, "a.toml", "[queue\n");
    auto error = load_error(file);
    CHECK(error.message.find(file + ":1:") == 0);
  }
  SECTION("a file that is not there")
  {
    auto error = load_error(dir.file("missing.toml"));
    CHECK(error.message.find("does not exist") != std::string::npos);
  }
}

TEST_CASE("Config: ACMO_* variables win over the file", "[config]")
{
  TempDir dir;
  auto file = write(dir, "acmo.toml", "[queue]\ndurability = \"normal\"\nmax_retries = 7\n");
  EnvVar durability("ACMO_QUEUE_DURABILITY", "full");
  EnvVar delays("ACMO_QUEUE_RETRY_DELAYS", "2s, 10s");
  ConfigSources sources;
  sources.explicit_file = file;
  auto config = load_config(sources);
  REQUIRE(config);
  CHECK(config->get_string("queue.durability") == "full");
  CHECK(config->entry("queue.durability").source == "env ACMO_QUEUE_DURABILITY");
  CHECK(config->get_list("queue.retry_delays") == std::vector<int64_t>{2000, 10000});
  CHECK(config->get_int("queue.max_retries") == 7);

  EnvVar bad("ACMO_QUEUE_CONTENT_BASED_DEDUP", "perhaps");
  auto failed = load_config(sources);
  REQUIRE_FALSE(failed);
  CHECK(failed.error().message.find("ACMO_QUEUE_CONTENT_BASED_DEDUP") != std::string::npos);
}

TEST_CASE("Config: a variable a letter or two from a key's is a typo, not left aside", "[config]")
{
  ConfigSources sources;
  sources.search_path = {};
  {
    EnvVar typo("ACMO_QUEUE_VISIBILTY_TIMEOUT", "5s");
    auto failed = load_config(sources);
    REQUIRE_FALSE(failed);
    CHECK(failed.error().message
          == "environment variable ACMO_QUEUE_VISIBILTY_TIMEOUT is not one acmo reads; did you "
             "mean ACMO_QUEUE_VISIBILITY_TIMEOUT? Correct its name, or unset it");
    // Without the environment, the name is not read at all.
    sources.use_environment = false;
    CHECK(load_config(sources));
    sources.use_environment = true;
  }
  // Variables of scripts around acmo, far from any key's, are theirs.
  EnvVar other("ACMO_DEPLOY_COLOUR", "blue");
  EnvVar test("ACMO_TEST_PG_URL", "postgresql://x/y");
  CHECK(load_config(sources));
}

TEST_CASE("Config: the first file on the search path is read", "[config]")
{
  TempDir dir;
  auto second = write(dir, "second.toml", "[queue]\nname = \"second\"\n");
  auto third = write(dir, "third.toml", "[queue]\nname = \"third\"\n");
  ConfigSources sources;
  sources.use_environment = false;
  sources.search_path = {dir.file("absent.toml"), second, third};
  auto config = load_config(sources);
  REQUIRE(config);
  CHECK(config->get_string("queue.name") == "second");
  CHECK(config->file() == second);
}

TEST_CASE("Config: config show's redaction hides tokens and passwords, nothing else", "[config]")
{
  auto key = [](const std::string& name) {
    for (const auto& k : config_keys()) {
      if (k.name == name) return k;
    }
    FAIL("no key " << name);
    return config_keys().front();
  };
  auto text = [](const ConfigValue& v) { return std::get<std::string>(v); };
  const ConfigKey store = key("store.url");
  CHECK(text(redacted(store, std::string("postgresql://acmo:s3cret@db:5432/acmo"))) ==
        "postgresql://acmo:***@db:5432/acmo");
  CHECK(text(redacted(store, std::string("postgresql://acmo@db/acmo?password=s3cret&x=1"))) ==
        "postgresql://acmo@db/acmo?password=***&x=1");
  CHECK(text(redacted(store, std::string("host=db password='a b\\' c' user=x"))) ==
        "host=db password=*** user=x");
  CHECK(text(redacted(store, std::string("postgresql://acmo@db/a@b"))) ==
        "postgresql://acmo@db/a@b");
  CHECK(text(redacted(key("cache.url"), std::string("redis://:r3dis@127.0.0.1:6379/0"))) ==
        "redis://:***@127.0.0.1:6379/0");
  CHECK(std::get<std::vector<std::string>>(redacted(
          key("server.api_tokens"), std::vector<std::string>{"a", "b"})) ==
        std::vector<std::string>{"***", "***"});
  CHECK(std::get<std::vector<std::string>>(
          redacted(key("server.admin_tokens"), std::vector<std::string>{})).empty());
  CHECK(std::get<std::vector<std::string>>(redacted(
          key("server.metrics_tokens"), std::vector<std::string>{"scraper"})) ==
        std::vector<std::string>{"***"});
  CHECK(text(redacted(key("server.listen"), std::string("127.0.0.1:3000"))) == "127.0.0.1:3000");
}

TEST_CASE("Config: an open /metrics with metrics tokens is refused, naming both keys", "[config]")
{
  TempDir dir;
  CHECK(check_config(load(write(dir, "open.toml", "[server]\nmetrics_open = true\n"))));
  CHECK(check_config(load(write(dir, "tokens.toml", "[server]\nmetrics_tokens = [\"s\"]\n"))));
  auto both = check_config(load(write(dir, "both.toml", "[server]\nmetrics_open = true\n"
                                                         "metrics_tokens = [\"s\"]\n")));
  REQUIRE_FALSE(both);
  CHECK(both.error().field == "server.metrics_open");
  CHECK(both.error().message.find("server.metrics_tokens would never be used") != std::string::npos);
}

TEST_CASE("Config: server.listen is HOST:PORT; :PORT is every IPv4 address", "[config]")
{
  auto listen = parse_listen(":3000");
  REQUIRE(listen.has_value());
  CHECK(listen->host == "0.0.0.0");
  CHECK(listen->port == 3000);
  listen = parse_listen("[::1]:8080");
  REQUIRE(listen.has_value());
  CHECK(listen->host == "::1");
  CHECK(!parse_listen("3000").has_value());
  CHECK(!parse_listen(":").has_value());
  CHECK(!parse_listen("host:70000").has_value());
}

TEST_CASE("Config: every key fills a field of its own", "[config]")
{
  const Config before = defaults();
  for (const auto& key : config_keys()) {
    INFO(key.name);
    REQUIRE(key.field.set != nullptr);
    REQUIRE(key.field.get != nullptr);
    // The field holds the key's value, and changes with it alone.
    CHECK(key.field.get(before.settings()) == before.entry(key.name).value);
    Config after = before;
    const ConfigValue value = other_value(key, before.entry(key.name).value);
    after.set(key.name, ConfigEntry{value, "test"});
    CHECK(key.field.get(after.settings()) == value);
    for (const auto& other : config_keys()) {
      if (&other == &key) continue;
      INFO("and not " << other.name);
      CHECK(other.field.get(after.settings()) == other.field.get(before.settings()));
    }
  }
}

TEST_CASE("Config: the options an empty configuration gives are each layer's defaults",
          "[config]")
{
  const Config config = defaults();
  const Settings& from_table = config.settings();
  // The table's settings, each layer's options replaced by the ones it makes by itself.
  Settings from_layers = from_table;
  from_layers.queue = QueueOptions{};
  from_layers.handler = HandlerOptions{};
  from_layers.store.postgres = PgOptions{};
  from_layers.cache.redis = RedisCacheOptions{};
  from_layers.server = ServerOptions{};
  for (const auto& key : config_keys()) {
    INFO(key.name);
    CHECK(format_value(key, key.field.get(from_layers)) ==
          format_value(key, key.field.get(from_table)));
  }
  CHECK(queue_options_from(config).dlq_name == QueueOptions{}.dlq_name);
  CHECK(RedisCacheOptions{}.ttl_ms == from_table.cache.ttl_ms);
  CHECK(MemoryCache::k_default_max_bytes == from_table.cache.max_bytes);

  // What the server and its API take of the other tables.
  const daemon::HttpServerOptions server;
  const auto listen = parse_listen(from_table.listen).value();
  CHECK(server.host == listen.host);
  CHECK(server.port == listen.port);
  CHECK(server.group_by == from_table.group_by);
  CHECK(server.store_backend == from_table.store.backend);
  const daemon::ApiOptions api;
  CHECK(api.max_body == server.max_body);
  CHECK(api.metrics_open == server.metrics_open);
  CHECK(api.rate_limit == server.rate_limit);
  CHECK(api.rate_burst == server.rate_burst);
  CHECK(api.group_by == server.group_by);
  CHECK(api.store_backend == server.store_backend);
  CHECK(api.backlog_max_age_ms == server.backlog_max_age_ms);
  const daemon::ConnectionOptions connections;
  CHECK(connections.host == server.host);
  CHECK(connections.port == server.port);
  CHECK(connections.threads == server.threads);
  CHECK(connections.max_body == server.max_body);
  CHECK(connections.read_timeout_ms == server.read_timeout_ms);
  CHECK(connections.write_timeout_ms == server.write_timeout_ms);
  CHECK(connections.keep_alive_timeout_ms == server.keep_alive_timeout_ms);
  CHECK(connections.keep_alive_max == server.keep_alive_max);
  CHECK(connections.max_connections_per_client == server.max_connections_per_client);
}

TEST_CASE("Config: a file's values reach the handler, store, cache and server options",
          "[config]")
{
  TempDir dir;
  Config config = load(write(dir, "acmo.toml",
                             "[handler]\nconcurrency = 3\nwait = \"250ms\"\n"
                             "[store]\npool_size = 9\n"
                             "[cache]\nbackend = \"none\"\nttl = \"2m\"\nmax_bytes = 8192\n"
                             "[server]\nthreads = 12\napi_tokens = [\"t\"]\nhandler = false\n"
                             "[log]\nformat = \"json\"\n"));
  config.set("data_dir", ConfigEntry{std::string("/srv/acmo"), "flag --data-dir"});
  const HandlerOptions handler = handler_options_from(config);
  CHECK(handler.concurrency == 3);
  CHECK(handler.batch_size == 100);
  CHECK(handler.wait_ms == 250);
  const Settings& s = config.settings();
  CHECK(s.store.postgres.pool_size == 9);
  CHECK(s.cache.backend == "none");
  CHECK(s.cache.ttl_ms == 120'000);
  CHECK(s.cache.max_bytes == 8192);
  CHECK(s.server.threads == 12);
  CHECK(s.server.api_tokens == std::vector<std::string>{"t"});
  CHECK_FALSE(s.serve_handler);
  CHECK(s.log.format == "json");
  CHECK(s.data_dir == "/srv/acmo");
}

TEST_CASE("Config: a value outside its key's range is refused, naming the key", "[config]")
{
  std::vector<const ConfigKey*> ranged;
  for (const auto& key : config_keys()) {
    if (key.range.none()) continue;
    INFO(key.name);
    CHECK((key.type == KeyType::integer || key.type == KeyType::duration));
    ranged.push_back(&key);
  }
  REQUIRE(ranged.size() > 10);
  const Config base = defaults();
  REQUIRE(check_config(base));
  for (const ConfigKey* key : ranged) {
    for (int64_t v : {key->range.low - 1, key->range.high + 1, key->range.low, key->range.high}) {
      INFO(key->name << " = " << v);
      Config config = base;
      config.set(key->name, ConfigEntry{v, "test"});
      auto ok = check_config(config);
      if (v >= key->range.low && v <= key->range.high) {
        CHECK(ok);
        continue;
      }
      REQUIRE_FALSE(ok);
      CHECK(ok.error().field == key->name);
      // Durations as one writes them ("12h", "0s"), integers as numbers.
      auto text = [&](int64_t n) -> std::string {
        if (key->type != KeyType::duration) return std::to_string(n);
        if (n == 0) return "0s";
        const std::string t = format_value(*key, ConfigValue(std::in_place_type<int64_t>, n));
        return t.substr(1, t.size() - 2);
      };
      CHECK(ok.error().message == fmt::format("{} must be between {} and {}, not {}", key->name,
                                              text(key->range.low), text(key->range.high),
                                              text(v)));
    }
  }
  // The messages users see.
  Config config = base;
  config.set("server.threads", ConfigEntry{int64_t{0}, "test"});
  CHECK(check_config(config).error().message == "server.threads must be between 1 and 1024, not 0");
  config = base;
  config.set("handler.wait", ConfigEntry{int64_t{30'000}, "test"});
  CHECK(check_config(config).error().message ==
        "handler.wait must be between 0s and 20s, not 30s");
  config = base;
  config.set("queue.visibility_timeout", ConfigEntry{int64_t{13 * 3'600'000}, "test"});
  CHECK(check_config(config).error().message ==
        "queue.visibility_timeout must be between 0s and 12h, not 13h");
  // Every value out of range at once, each with where it was set after the first.
  config = base;
  config.set("server.threads", ConfigEntry{int64_t{0}, "env ACMO_SERVER_THREADS"});
  config.set("queue.max_retries", ConfigEntry{int64_t{99'999'999'999}, "env ACMO_QUEUE_MAX_RETRIES"});
  auto both = check_config(config);
  REQUIRE_FALSE(both);
  CHECK(both.error().field == "queue.max_retries");
  CHECK(both.error().message ==
        "queue.max_retries must be between 0 and 1000, not 99999999999\n"
        "  server.threads must be between 1 and 1024, not 0 (set by env ACMO_SERVER_THREADS)");
}

TEST_CASE("Config: a file's values out of range are all reported, each at its line", "[config]")
{
  TempDir dir;
  const std::string file =
    write(dir, "acmo.toml",
          "[handler]\nconcurrency = 0\n[queue]\nvisibility_timeout = \"13h\"\n"
          "max_retries = 9223372036854775807\n");
  CHECK(load_error(file).message ==
        file + ":2:15: handler.concurrency must be between 1 and 64, not 0\n  " + file +
        ":4:22: queue.visibility_timeout must be between 0s and 12h, not 13h\n  " + file +
        ":5:15: queue.max_retries must be between 0 and 1000, not 9223372036854775807\n  (3 "
        "problems in " + file + ")");
}

TEST_CASE("Config: tables are sections or errors, never a way around the keys", "[config]")
{
  TempDir dir;
  auto problems = [&](const std::string& text) {
    return load_error(write(dir, "acmo.toml", text)).message;
  };
  // A key given a table is a wrong type, not a key left at its default.
  CHECK_THAT(problems("[queue]\nmax_retries = {}\n"),
             Catch::Contains(":2:15: queue.max_retries: must be"));
  CHECK_THAT(problems("[queue.max_retries]\n"), Catch::Contains("queue.max_retries: must be"));
  // A table acmo does not know, even empty, is an unknown key.
  CHECK_THAT(problems("[quue]\n"), Catch::Contains(":1:1: unknown key quue"));
  CHECK_THAT(problems("[queue.extra]\n"), Catch::Contains("unknown key queue.extra"));
  CHECK_THAT(problems("extra = {}\n"), Catch::Contains("unknown key extra"));
  // A section given a value.
  CHECK_THAT(problems("queue = 5\n"),
             Catch::Contains("queue is a section, not a value; write its keys under [queue]"));
  // A dotted key of a hundred thousand parts, which the TOML parser would recurse into until
  // the stack ran out, is refused before it is parsed; so is one of 66 parts.
  std::string deep;
  for (int i = 0; i < 100'000; ++i) deep += "q.";
  CHECK_THAT(problems(deep + "q = 1\n"),
             Catch::Contains(":1: a key of more than 65 parts; acmo's keys have two"));
  std::string sixty_six;
  for (int i = 0; i < 65; ++i) sixty_six += "q.";
  CHECK_THAT(problems("x = 1\n" + sixty_six + "q = 1\n"), Catch::Contains(":2: a key of more"));
  // Dots in strings and comments do not count.
  std::string dots(200, '.');
  CHECK(load(write(dir, "acmo.toml",
                   "# " + dots + "\n[log]\nfile = \"/var/log/a" + dots + "\" # " + dots + "\n"))
          .get_string("log.file") == "/var/log/a" + dots);
}

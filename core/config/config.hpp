// acmo's configuration: one declarative table of keys drives parsing, validation, the
// environment variables, the typed Settings each layer's options come from, `acmo config show`
// and the documentation (docs/configuration.md).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "core/config/settings.hpp"
#include "core/queue/queue.hpp"
#include "core/util/error.hpp"

namespace acmo {

enum class KeyType { string, boolean, integer, duration, duration_list, choice, string_list };

// What of a key's value is secret, hidden by `acmo config show` unless --show-secrets.
enum class Secret {
  none,
  whole, // every value (tokens)
  url,   // the password of a connection URL or libpq string
};

using ConfigValue =
  std::variant<std::string, bool, int64_t, std::vector<int64_t>, std::vector<std::string>>;

// The field of Settings a key fills: `set` stores a value of the key's type there, `get` reads
// it back.
struct ConfigField {
  void (*set)(Settings& settings, const ConfigValue& value) = nullptr;
  ConfigValue (*get)(const Settings& settings) = nullptr;
};

// The values an integer or duration key allows (durations in ms), both ends included; none
// when high < low.
struct ConfigRange {
  int64_t low = 0;
  int64_t high = -1;

  bool none() const { return high < low; }
};

// Everything acmo knows of a key, in one row: a new key is a row of config_keys() (and a field
// of Settings for it to fill).
struct ConfigKey {
  const char* name;          // "queue.visibility_timeout"; top-level keys have no dot
  KeyType type;
  const char* default_value; // as written in a TOML file, e.g. "\"30s\"" or "true"
  const char* description;   // one line
  ConfigField field;
  ConfigRange range = {};    // checked by check_config; the [queue] keys by check_queue_options
  const char* choices = "";  // for KeyType::choice: "full|normal"
  Secret secret = Secret::none;
};

// Every key acmo knows, in the order `acmo config show` lists them.
const std::vector<ConfigKey>& config_keys();

// The environment variable of a key: ACMO_ and the name in capitals, '.' → '_'
// ("queue.durability" → "ACMO_QUEUE_DURABILITY").
std::string env_name(const ConfigKey& key);

struct ConfigEntry {
  ConfigValue value;
  std::string source; // "default", "/etc/acmo/acmo.toml:12", "env ACMO_X", "flag --data-dir"
};

class Config
{
public:
  // A value by its key's name (tests); commands read settings().
  const std::string& get_string(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  int64_t get_int(const std::string& key) const; // integers, and durations in ms
  const std::vector<int64_t>& get_list(const std::string& key) const;
  const std::vector<std::string>& get_strings(const std::string& key) const;
  const ConfigEntry& entry(const std::string& key) const;
  // Every key's value in the field its row names.
  const Settings& settings() const { return m_settings; }
  // The file that was read, if any.
  const std::string& file() const { return m_file; }

  // Set a key of config_keys() and the field it fills.
  void set(const std::string& key, ConfigEntry entry);
  void set_file(std::string file) { m_file = std::move(file); }

private:
  std::map<std::string, ConfigEntry> m_entries;
  Settings m_settings;
  std::string m_file;
};

// The value with what is secret in it replaced by "***": each token of a Secret::whole key, the
// password of a Secret::url key ("postgresql://acmo:***@db/acmo", "password=***").
ConfigValue redacted(const ConfigKey& key, const ConfigValue& value);

// Parse "1s", "500ms", "5m", "2h", "4d" into milliseconds.
Expected<int64_t> parse_duration(std::string_view text);
// The value as it would be written in TOML (durations in their shortest unit).
std::string format_value(const ConfigKey& key, const ConfigValue& value);

// Where configuration comes from, besides the built-in defaults.
struct ConfigSources {
  std::string explicit_file; // --config FILE; must exist
  bool use_environment = true;
  // Files searched in order when no file is given: ./acmo.toml, $XDG_CONFIG_HOME/acmo/acmo.toml
  // (or ~/.config/acmo/acmo.toml), /etc/acmo/acmo.toml. The first that exists is read.
  std::vector<std::string> search_path;
};

// The default search path, from the environment.
std::vector<std::string> default_config_search_path();

// Defaults, then the file (--config, else $ACMO_CONFIG, else the first found on the search
// path), then ACMO_* variables. Errors name the file, line, column and key.
Expected<Config> load_config(const ConfigSources& sources);

// The queue options a configuration describes. queue.dlq_name, when not set, is the queue's
// name and "-dlq".
QueueOptions queue_options_from(const Config& config);

// The URL of a PostgreSQL queue: queue.url, or store.url when queue.url is empty.
std::string queue_url(const Settings& settings);

// Whether the queue and the orders are in one PostgreSQL database (both back-ends "postgres",
// the same URL), so that the handler applies a batch and deletes its messages in one
// transaction.
bool queue_shares_store_database(const Settings& settings);

// Check the keys outside [queue], which check_queue_options checks: each key's range, and what
// goes together (store.backend = "postgres" needs store.url); the error names the key in
// `field`.
Expected<void> check_config(const Config& config);

// "HOST:PORT" → host and port; an error that says what is wrong.
struct ListenAddress {
  std::string host;
  int port = 0;
};
Expected<ListenAddress> parse_listen(std::string_view text);

} // namespace acmo

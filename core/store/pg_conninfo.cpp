#include "core/store/pg_conninfo.hpp"

#include <cctype>
#include <memory>

#include <fmt/core.h>
#include <libpq-fe.h>

#include "core/store/pg_text.hpp"

namespace acmo {

namespace {

struct ConninfoFree {
  void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};

// One option the string sets, in libpq's order of options.
struct Setting {
  std::string key;
  std::string value;
  bool secret = false; // libpq shows it as a password field
};

bool is_uri(std::string_view url)
{
  return url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
}

// libpq's message about a URI it cannot parse may quote the whole URI: that copy is left out,
// as it may hold a password. (About key=value pairs it quotes only a keyword.)
std::string parse_error(std::string_view url, char* errmsg)
{
  std::string why = errmsg != nullptr ? errmsg : "libpq could not parse it";
  PQfreemem(errmsg);
  while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
  // Whatever its scheme ("http://USER:PASSWORD@..." is quoted whole as a keyword).
  if (url.find("://") != std::string_view::npos) {
    for (auto at = why.find(url); at != std::string::npos; at = why.find(url, at + 3)) {
      why.replace(at, url.size(), "***");
    }
  }
  return why;
}

// `key`: the setting that holds `url`, named in the error.
Expected<std::vector<Setting>> parse(std::string_view url, std::string_view key = "store.url")
{
  char* errmsg = nullptr;
  std::unique_ptr<PQconninfoOption, ConninfoFree> options(
    PQconninfoParse(std::string(url).c_str(), &errmsg));
  if (!options) {
    return make_error(Errc::invalid_input,
                      fmt::format("{} is neither a PostgreSQL URL "
                                  "(postgresql://USER@HOST:PORT/DB) nor key=value pairs: {}",
                                  key, parse_error(url, errmsg)),
                      std::string(key));
  }
  std::vector<Setting> out;
  for (const PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    out.push_back(Setting{o->keyword, o->val,
                          o->dispchar != nullptr && std::string_view(o->dispchar) == "*"});
  }
  return out;
}

// A value of a key=value string: quoted when it is empty or holds a space, a quote or a
// backslash.
std::string quoted(std::string_view value)
{
  if (!value.empty() && value.find_first_of(" \t\n\r\f\v'\\") == std::string_view::npos) {
    return std::string(value);
  }
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

std::string percent_encoded(std::string_view text)
{
  std::string out;
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (std::isalnum(byte) != 0 || c == '-' || c == '.' || c == '_' || c == '~') {
      out += c;
    } else {
      out += fmt::format("%{:02X}", byte);
    }
  }
  return out;
}

std::vector<std::string> split_commas(const std::string& text)
{
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t comma; (comma = text.find(',', start)) != std::string::npos; start = comma + 1) {
    out.push_back(text.substr(start, comma - start));
  }
  out.push_back(text.substr(start));
  return out;
}

std::string keyword_value_string(const std::vector<Setting>& settings, bool redact)
{
  std::string out;
  for (const auto& s : settings) {
    if (!out.empty()) out += ' ';
    out += s.key + "=" + (redact && s.secret ? "***" : quoted(s.value));
  }
  return out;
}

// The settings as a URI of the scheme `scheme`, the secrets as "***".
std::string redacted_uri(std::string_view scheme, const std::vector<Setting>& settings)
{
  const Setting* user = nullptr;
  const Setting* password = nullptr;
  const Setting* host = nullptr;
  const Setting* port = nullptr;
  const Setting* dbname = nullptr;
  for (const auto& s : settings) {
    if (s.key == "user") user = &s;
    if (s.key == "password") password = &s;
    if (s.key == "host") host = &s;
    if (s.key == "port") port = &s;
    if (s.key == "dbname") dbname = &s;
  }
  const std::vector<std::string> hosts = split_commas(host != nullptr ? host->value : "");
  const std::vector<std::string> ports = split_commas(port != nullptr ? port->value : "");
  // A URI gives each host its port; hosts and ports that do not pair up go in the query.
  const bool paired = hosts.size() == ports.size();
  std::string out(scheme);
  if (user != nullptr) out += percent_encoded(user->value);
  if (password != nullptr) out += ":***";
  if (user != nullptr || password != nullptr) out += '@';
  for (size_t i = 0; paired && i < hosts.size(); ++i) {
    if (i > 0) out += ',';
    const bool ipv6 = hosts[i].find(':') != std::string::npos;
    out += ipv6 ? "[" + hosts[i] + "]" : percent_encoded(hosts[i]);
    if (!ports[i].empty()) out += ":" + percent_encoded(ports[i]);
  }
  if (dbname != nullptr) out += "/" + percent_encoded(dbname->value);
  char separator = '?';
  for (const auto& s : settings) {
    if (&s == user || &s == password || &s == dbname) continue;
    if (paired && (&s == host || &s == port)) continue;
    out += separator + s.key + "=" + (s.secret ? "***" : percent_encoded(s.value));
    separator = '&';
  }
  return out;
}

} // namespace

Expected<std::string> pg_conninfo_with_defaults(
  std::string_view url, const std::vector<std::pair<std::string, std::string>>& defaults)
{
  auto settings = parse(url);
  if (!settings) return Unexpected(settings.error());
  for (const auto& [key, value] : defaults) {
    bool set = false;
    for (const auto& s : *settings) set = set || s.key == key;
    if (!set) settings->push_back(Setting{key, value});
  }
  return keyword_value_string(*settings, false);
}

Expected<void> check_pg_url(std::string_view url, std::string_view key)
{
  auto settings = parse(url, key);
  if (!settings) return Unexpected(settings.error());
  // The options libpq checks only when it connects, which would be taken for a server not
  // answering.
  static const std::vector<std::pair<std::string_view, std::vector<std::string_view>>> k_choices = {
    {"sslmode", {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}},
    {"gssencmode", {"disable", "prefer", "require"}},
    {"channel_binding", {"disable", "prefer", "require"}},
    {"target_session_attrs",
     {"any", "read-write", "read-only", "primary", "standby", "prefer-standby"}},
  };
  for (const auto& setting : *settings) {
    for (const auto& [name, choices] : k_choices) {
      if (setting.key != name) continue;
      bool known = false;
      for (auto c : choices) known = known || setting.value == c;
      if (known) continue;
      std::string list;
      for (size_t i = 0; i < choices.size(); ++i) {
        list += i == 0 ? "" : (i + 1 == choices.size() ? " or " : ", ");
        list += choices[i];
      }
      return make_error(Errc::invalid_input,
                        fmt::format("{} sets {} to \"{}\", which libpq does not know; use {}",
                                    key, name, setting.value, list),
                        std::string(key));
    }
  }
  return {};
}

std::string redact_pg_url(std::string_view url)
{
  auto settings = parse(url);
  if (!settings) return "***";
  bool secret = false;
  for (const auto& s : *settings) secret = secret || s.secret;
  if (!secret) return std::string(url);
  if (is_uri(url)) return redacted_uri(url.substr(0, url.find("://") + 3), *settings);
  return keyword_value_string(*settings, true);
}

std::string pg_scrubbed(std::string_view url, std::string_view what)
{
  std::string out(what);
  auto blank = [&out](std::string_view secret) {
    if (secret.empty()) return;
    for (auto at = out.find(secret); at != std::string::npos; at = out.find(secret, at + 3)) {
      out.replace(at, secret.size(), "***");
    }
  };
  if (auto settings = parse(url)) {
    for (const auto& s : *settings) {
      if (s.secret) blank(s.value);
    }
  } else if (url.find("://") != std::string_view::npos) {
    // Not one libpq can read: the password is what the URI holds between "://USER:" and the
    // last '@' before the host.
    const auto start = url.find("://") + 3;
    const auto at = url.rfind('@');
    if (at != std::string_view::npos && at > start) {
      const auto user_info = url.substr(start, at - start);
      if (const auto colon = user_info.find(':'); colon != std::string_view::npos) {
        blank(user_info.substr(colon + 1));
      }
    }
  }
  // A URI libpq quotes in its message (about one it cannot parse) goes whole.
  for (std::string_view scheme : {"\"postgresql://", "\"postgres://"}) {
    for (auto at = out.find(scheme); at != std::string::npos; at = out.find(scheme, at + 1)) {
      const auto end = out.find('"', at + 1);
      out.replace(at, (end == std::string::npos ? out.size() : end + 1) - at, "\"***\"");
    }
  }
  return out;
}

std::string pg_unavailable_message(std::string_view url, std::string_view what,
                                   std::string_view key)
{
  const std::string reason = pg_scrubbed(url, first_line(what));
  // The server's words for it (SQLSTATE 53300, which libpq gives a failed connection only as
  // text).
  for (std::string_view full : {"too many clients", "too many connections",
                                "connection slots are reserved"}) {
    if (reason.find(full) == std::string::npos) continue;
    return fmt::format("PostgreSQL at {} takes no more connections ({}); raise its "
                       "max_connections (or the role's or the database's CONNECTION LIMIT), or "
                       "lower what acmo keeps open: about 22 connections to the queue's database "
                       "for each acmo process, and store.pool_size",
                       redact_pg_url(url), reason);
  }
  // The server answered, and refused: a role, password or database it does not have, or
  // pg_hba.conf.
  bool refused = false;
  for (std::string_view words : {"password authentication failed", "no pg_hba.conf entry",
                                 "is not permitted to log in", "permission denied for database",
                                 "does not exist"}) {
    refused = refused || reason.find(words) != std::string::npos;
  }
  if (refused && reason.find("FATAL:") != std::string::npos) {
    return fmt::format("PostgreSQL at {} refused the connection ({}); check the user, the "
                       "password and the database in {}, and the server's pg_hba.conf",
                       redact_pg_url(url), reason, key);
  }
  return fmt::format("PostgreSQL at {} is not answering ({}); check that the server runs and {}",
                     redact_pg_url(url), reason, key);
}

std::string pg_refused_message(std::string_view url, std::string_view state,
                               std::string_view what, std::string_view key)
{
  if (state == "26000" || state == "42P05") {
    return fmt::format("the connection to {} did not keep acmo's session ({}: {}): a pooler in "
                       "transaction mode (such as PgBouncer's pool_mode = transaction) hands each "
                       "transaction to any server connection; point {} at PostgreSQL itself or "
                       "at a pooler in session mode",
                       redact_pg_url(url), state, pg_scrubbed(url, first_line(what)), key);
  }
  if (state == "42501" || what.find("permission denied") != std::string_view::npos) {
    return fmt::format("PostgreSQL refused acmo's statement for want of a right ({}); the role "
                       "of {} needs the right to create the schema (GRANT CREATE ON DATABASE), "
                       "or a schema it owns, and the rights on the tables acmo made there",
                       pg_scrubbed(url, first_line(what)), key);
  }
  return fmt::format("PostgreSQL refused acmo's statement ({}: {}); this is a bug or a schema "
                     "acmo did not make",
                     state, pg_scrubbed(url, first_line(what)));
}

} // namespace acmo

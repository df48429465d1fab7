// PostgreSQL connection strings (store.url), read by libpq's own parser (PQconninfoParse): a
// URI (postgresql://USER:PASSWORD@HOST:PORT/DB?KEY=VALUE) or key=value pairs
// ("host=db user=acmo").
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/util/error.hpp"

namespace acmo {

// The string libpq is given to connect: every option `url` sets, as key=value pairs, and each
// of `defaults` that `url` does not set. Errc::invalid_input, field "store.url", with libpq's
// reason, when libpq cannot parse `url`.
Expected<std::string> pg_conninfo_with_defaults(
  std::string_view url, const std::vector<std::pair<std::string, std::string>>& defaults);

// Whether libpq can read `url` (the setting `key`, "store.url" or "queue.url"), and knows the
// values of its sslmode, gssencmode, channel_binding and target_session_attrs, which it would
// otherwise refuse only when connecting. Errc::invalid_input naming `key` when not.
Expected<void> check_pg_url(std::string_view url, std::string_view key);

// The URL for messages: as written when it holds no secret; otherwise written again from
// what libpq reads in it, in the same form (URI or key=value), with each secret (password,
// sslpassword) as "***". "***" when libpq cannot parse it.
std::string redact_pg_url(std::string_view url);

// `what` (a message of libpq's or the server's) with each secret of `url` in it, and any URI
// libpq quotes in it, replaced by "***".
std::string pg_scrubbed(std::string_view url, std::string_view what);

// The message for a server at `url` that could not be reached, or refused a connection:
// `what` is libpq's reason, `key` the setting that names the server (queue.url, store.url).
// A server that takes no more connections (max_connections, or a role's or a database's
// CONNECTION LIMIT, reached) is told apart, with what to change.
std::string pg_unavailable_message(std::string_view url, std::string_view what,
                                   std::string_view key);

// The message for a statement PostgreSQL refused with SQLSTATE `state` (`what`: its text),
// which a statement of acmo's is refused for only when something other than acmo changed the
// database. A prepared statement the session should have but does not (26000), or has already
// (42P05), means the connection does not keep its session from one transaction to the next,
// as behind a pooler in transaction mode; `key` is the setting that names the server.
std::string pg_refused_message(std::string_view url, std::string_view state,
                               std::string_view what, std::string_view key);

} // namespace acmo

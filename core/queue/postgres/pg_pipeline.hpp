#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/store/pg_binary.hpp"

// libpq's types, as libpq-fe.h declares them (not included here).
struct pg_conn;
struct pg_result;

namespace acmo {

// The rows of one statement's result, read as text.
class PgRows
{
public:
  explicit PgRows(pg_result* result);
  PgRows(PgRows&&) noexcept;
  PgRows& operator=(PgRows&&) noexcept;
  ~PgRows();

  int size() const;
  std::string_view get(int row, int column) const;
  int64_t get_int(int row, int column) const;

private:
  pg_result* m_result;
};

// A parameter of a statement: text, or bytes in the binary format of its type.
struct PgParam
{
  PgParam(std::string v) : value(std::move(v)) {}
  PgParam(PgBinaryArray&& array) : value(array.take()), binary(true) {}
  std::string value;
  bool binary = false;
};

// A connection to PostgreSQL in libpq's pipeline mode: prepared statements are sent one after
// another without waiting for the results of those before, each followed by a sync, so that
// each is a transaction of its own; their results come back in the order they were sent. The
// server runs the next statement as soon as it has finished one, while the client reads that
// one's results and builds the statement after.
//
// Errors are thrown as libpqxx's exceptions (pqxx::broken_connection, pqxx::sql_error and its
// kin), so that they are mapped as those of every other connection of the queue.
class PgPipeline
{
public:
  // Connect with `conninfo` and run `setup` (statements without parameters) before anything
  // else.
  PgPipeline(const std::string& conninfo, const std::string& setup);
  PgPipeline(const PgPipeline&) = delete;
  PgPipeline& operator=(const PgPipeline&) = delete;
  ~PgPipeline();

  // Before start(): run a statement with text parameters and wait for its result; prepare a
  // statement.
  PgRows exec(const std::string& sql, const std::vector<std::string>& params);
  void prepare(const std::string& name, const std::string& sql);
  // Enter pipeline mode: from now on only send() and take().
  void start();

  // Send prepared statement `name` with its parameters, as a transaction of its own.
  void send(const std::string& name, const std::vector<PgParam>& params);
  // The result of the oldest statement sent and not yet taken (waiting for it), or its error,
  // thrown. A connection that broke is not usable any more (is_open() is false).
  PgRows take();
  bool is_open() const;
  // Whether take() has the oldest statement's result at hand (reading what has come without
  // waiting); true on a broken connection too, whose take() throws. socket() is what to wait
  // on with poll() for more to come.
  bool ready();
  int socket() const;

private:
  [[noreturn]] void fail_connection(std::string_view doing);
  [[noreturn]] void throw_error(pg_result* result, const std::string& query);
  void skip_to_sync();
  // Throw the error `error` (a result) once the rest of its statement is read, up to its sync.
  [[noreturn]] void fail_at_sync(pg_result* error);

  pg_conn* m_conn = nullptr;
  bool m_broken = false;
};

} // namespace acmo

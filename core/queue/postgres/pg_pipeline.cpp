#include "core/queue/postgres/pg_pipeline.hpp"

#include <charconv>
#include <memory>

#include <libpq-fe.h>
#include <pqxx/except>

#include "core/store/pg_text.hpp"

namespace acmo {

PgRows::PgRows(pg_result* result) : m_result(result) {}

PgRows::PgRows(PgRows&& other) noexcept : m_result(other.m_result) { other.m_result = nullptr; }

PgRows& PgRows::operator=(PgRows&& other) noexcept
{
  if (this != &other) {
    if (m_result != nullptr) PQclear(m_result);
    m_result = other.m_result;
    other.m_result = nullptr;
  }
  return *this;
}

PgRows::~PgRows()
{
  if (m_result != nullptr) PQclear(m_result);
}

int PgRows::size() const { return m_result == nullptr ? 0 : PQntuples(m_result); }

std::string_view PgRows::get(int row, int column) const
{
  return {PQgetvalue(m_result, row, column),
          static_cast<size_t>(PQgetlength(m_result, row, column))};
}

int64_t PgRows::get_int(int row, int column) const
{
  const auto text = get(row, column);
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    throw pqxx::conversion_error("not a number: \"" + std::string(text) + "\"");
  }
  return value;
}

namespace {

// The parameters as libpq takes them: text, NUL-terminated (a text parameter holds no NUL).
std::vector<const char*> values_of(const std::vector<std::string>& params)
{
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p.c_str());
  return values;
}

} // namespace

PgPipeline::PgPipeline(const std::string& conninfo, const std::string& setup)
{
  m_conn = PQconnectdb(conninfo.c_str());
  if (m_conn == nullptr) throw pqxx::broken_connection("out of memory");
  try {
    if (PQstatus(m_conn) != CONNECTION_OK) fail_connection("connecting");
    PGresult* result = PQexec(m_conn, setup.c_str());
    if (PQresultStatus(result) != PGRES_COMMAND_OK
        && PQresultStatus(result) != PGRES_TUPLES_OK) {
      throw_error(result, setup);
    }
    PQclear(result);
  } catch (...) {
    PQfinish(m_conn);
    m_conn = nullptr;
    throw;
  }
}

PgPipeline::~PgPipeline()
{
  if (m_conn != nullptr) PQfinish(m_conn);
}

bool PgPipeline::is_open() const { return !m_broken && PQstatus(m_conn) == CONNECTION_OK; }

bool PgPipeline::ready()
{
  if (m_broken || PQconsumeInput(m_conn) != 1) return true;
  return PQisBusy(m_conn) == 0;
}

int PgPipeline::socket() const { return PQsocket(m_conn); }

void PgPipeline::fail_connection(std::string_view doing)
{
  m_broken = true;
  throw pqxx::broken_connection(std::string(doing) + ": " + first_line(PQerrorMessage(m_conn)));
}

void PgPipeline::throw_error(pg_result* result, const std::string& query)
{
  if (PQstatus(m_conn) != CONNECTION_OK) {
    if (result != nullptr) PQclear(result);
    fail_connection("the connection broke");
  }
  const char* state = result == nullptr ? nullptr : PQresultErrorField(result, PG_DIAG_SQLSTATE);
  std::string message = result == nullptr ? PQerrorMessage(m_conn) : PQresultErrorMessage(result);
  const std::string sqlstate = state == nullptr ? "" : state;
  if (result != nullptr) PQclear(result);
  if (sqlstate.rfind("40", 0) == 0) throw pqxx::transaction_rollback(message);
  throw pqxx::sql_error(message, query, sqlstate.empty() ? nullptr : sqlstate.c_str());
}

PgRows PgPipeline::exec(const std::string& sql, const std::vector<std::string>& params)
{
  const auto values = values_of(params);
  PGresult* result = PQexecParams(m_conn, sql.c_str(), static_cast<int>(values.size()), nullptr,
                                  values.data(), nullptr, nullptr, 0);
  if (PQresultStatus(result) != PGRES_COMMAND_OK && PQresultStatus(result) != PGRES_TUPLES_OK) {
    throw_error(result, sql);
  }
  return PgRows(result);
}

void PgPipeline::prepare(const std::string& name, const std::string& sql)
{
  PGresult* result = PQprepare(m_conn, name.c_str(), sql.c_str(), 0, nullptr);
  if (PQresultStatus(result) != PGRES_COMMAND_OK) throw_error(result, sql);
  PQclear(result);
}

void PgPipeline::start()
{
  if (PQenterPipelineMode(m_conn) != 1) fail_connection("entering pipeline mode");
}

void PgPipeline::send(const std::string& name, const std::vector<PgParam>& params)
{
  if (m_broken) fail_connection("sending");
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<int> formats;
  for (const auto& p : params) {
    values.push_back(p.value.c_str());
    lengths.push_back(static_cast<int>(p.value.size()));
    formats.push_back(p.binary ? 1 : 0);
  }
  // The sync ends the statement's transaction and sends what libpq holds (in blocking mode,
  // libpq reads what the server sends meanwhile, so neither side waits for the other).
  if (PQsendQueryPrepared(m_conn, name.c_str(), static_cast<int>(values.size()), values.data(),
                          lengths.data(), formats.data(), 0)
        != 1
      || PQpipelineSync(m_conn) != 1) {
    fail_connection("sending a statement");
  }
}

// Read up to the sync of the statement at hand. Between its results and the sync come the
// end of its results (nullptr) and, should its commit fail, that error.
void PgPipeline::skip_to_sync()
{
  int ends = 0;
  for (;;) {
    PGresult* r = PQgetResult(m_conn);
    if (r == nullptr) {
      if (PQstatus(m_conn) != CONNECTION_OK || ++ends > 2) {
        fail_connection("reading the end of a transaction");
      }
      continue;
    }
    const bool sync = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    if (sync) return;
  }
}

void PgPipeline::fail_at_sync(pg_result* error)
{
  // Cleared, should the connection break while the rest is read.
  std::unique_ptr<PGresult, void (*)(PGresult*)> held(error, PQclear);
  if (PQstatus(m_conn) == CONNECTION_OK) skip_to_sync();
  throw_error(held.release(), "");
}

// A statement's results: one result (its rows or its error), the end of them (nullptr), then
// the sync's. A commit that fails answers the sync with its error first. A statement after an
// error within one sync is not run (PGRES_PIPELINE_ABORTED), which one sync per statement
// never gives.
PgRows PgPipeline::take()
{
  if (m_broken) fail_connection("reading a result");
  PGresult* result = PQgetResult(m_conn);
  if (result == nullptr) fail_connection("reading a result");
  if (PQresultStatus(result) != PGRES_TUPLES_OK && PQresultStatus(result) != PGRES_COMMAND_OK) {
    fail_at_sync(result);
  }
  PgRows rows(result);
  PGresult* end = PQgetResult(m_conn);
  if (end != nullptr) {
    PQclear(end);
    fail_connection("reading a result (more than one)");
  }
  PGresult* sync = PQgetResult(m_conn);
  if (sync == nullptr) fail_connection("reading the end of a transaction");
  if (PQresultStatus(sync) != PGRES_PIPELINE_SYNC) {
    // The commit failed: its error stands for the statement's.
    fail_at_sync(sync);
  }
  PQclear(sync);
  return rows;
}

} // namespace acmo

// The schema of the queue on PostgreSQL (queue.schema) and its migrations.
#pragma once

#include <string>
#include <vector>

namespace acmo::pg_schema {

// Migration i (0-based) takes the schema from version i to i + 1 (the version table,
// queue_schema_version, holds how many have run). Never edit a migration that has shipped;
// append a new one.
const std::vector<std::string>& migrations();

} // namespace acmo::pg_schema

// The schema of an acmo database file and its migrations.
#pragma once

#include <string>
#include <vector>

namespace acmo::schema {

// "ACMO" as PRAGMA application_id: marks a file as an acmo database.
constexpr int k_application_id = 0x41434d4f;

// Migration i (0-based) takes the file from user_version i to i + 1. Never edit a migration
// that has shipped; append a new one.
const std::vector<std::string>& migrations();

} // namespace acmo::schema

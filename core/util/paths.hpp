// Where acmo keeps its files.
#pragma once

#include <string>

#include "core/util/error.hpp"

namespace acmo {

// The data directory: `flag` if set, else $ACMO_DATA_DIR, else `configured` (the config file's
// data_dir), else $XDG_STATE_HOME/acmo, else ~/.local/state/acmo.
std::string resolve_data_dir(const std::string& flag, const std::string& configured = {});

// Create `dir` and its parents if needed (mode 0700 for the last part); a clear error, with the
// field "data_dir", if that fails, `dir` is not a directory, or this user may not write it.
Expected<void> ensure_directory(const std::string& dir);

// The SQLite file of the data dir, which holds the queues (and, embedded, the orders).
std::string database_path(const std::string& data_dir);

} // namespace acmo

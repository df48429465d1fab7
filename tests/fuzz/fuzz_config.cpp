// libFuzzer target: the configuration file (TOML via load_config, then the checks every
// command runs: check_config, the queue options, the listen address). Besides not crashing
// (ASan, UBSan), a refusal must say why.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <unistd.h>

#include "core/config/config.hpp"
#include "core/queue/queue.hpp"

namespace {

// The file load_config reads: one per process, rewritten for every input (load_config takes
// a path; the file is what users hand it). In $TMPDIR, which scripts/test-fuzz.sh points at a
// directory of the run's own and removes after it.
const std::string& input_path()
{
  static const std::string path = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp")
                        + "/acmo-fuzz-config-XXXXXX";
    const int fd = ::mkstemp(templ.data());
    if (fd < 0) std::abort();
    ::close(fd);
    return templ;
  }();
  return path;
}

void need_message(const acmo::Error& error)
{
  if (error.message.empty()) __builtin_trap();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
  std::FILE* f = std::fopen(input_path().c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);

  acmo::ConfigSources sources;
  sources.explicit_file = input_path();
  sources.use_environment = false;
  auto config = acmo::load_config(sources);
  if (!config) {
    need_message(config.error());
    return 0;
  }
  if (auto ok = acmo::check_config(*config); !ok) need_message(ok.error());
  if (auto ok = acmo::check_queue_options(acmo::queue_options_from(*config)); !ok) {
    need_message(ok.error());
  }
  if (auto listen = acmo::parse_listen(config->get_string("server.listen")); !listen) {
    need_message(listen.error());
  }
  for (const auto& key : acmo::config_keys()) {
    (void)acmo::format_value(key, config->entry(key.name).value);
  }
  return 0;
}

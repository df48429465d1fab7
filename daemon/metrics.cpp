#include "daemon/metrics.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>

#include <fmt/core.h>

namespace acmo::daemon {

std::string label_value(std::string_view text)
{
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void write_family(std::string& out, std::string_view name, std::string_view type,
                  std::string_view help)
{
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void write_histogram(std::string& out, std::string_view name, std::string_view labels,
                     std::span<const int64_t> bounds_us, std::span<const int64_t> counts,
                     int64_t sum_us)
{
  const std::string_view comma = labels.empty() ? "" : ",";
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_us.size(); ++i) {
    cumulative += counts[i];
    out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, comma,
                       static_cast<double>(bounds_us[i]) / 1e6, cumulative);
  }
  cumulative += counts[bounds_us.size()];
  out += fmt::format("{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, comma, cumulative);
  const std::string braced = labels.empty() ? "" : fmt::format("{{{}}}", labels);
  out += fmt::format("{}_sum{} {}\n", name, braced, static_cast<double>(sum_us) / 1e6);
  out += fmt::format("{}_count{} {}\n", name, braced, cumulative);
}

HttpMetrics::HttpMetrics(const std::vector<std::pair<std::string_view, std::string_view>>& routes)
  : m_slots(std::make_unique<Slot[]>(routes.size() + k_methods.size())), m_routes(routes.size())
{
  for (size_t i = 0; i < routes.size(); ++i) {
    m_slots[i].method = routes[i].first;
    m_slots[i].route = routes[i].second;
  }
  for (size_t i = 0; i < k_methods.size(); ++i) {
    m_slots[m_routes + i].method = k_methods[i];
    m_slots[m_routes + i].route = k_unmatched;
  }
}

size_t HttpMetrics::unmatched(std::string_view method) const
{
  size_t i = 0;
  while (i + 1 < k_methods.size() && method != k_methods[i]) ++i;
  return m_routes + i;
}

void HttpMetrics::count(size_t slot, int status)
{
  if (status < 100 || status > 599) status = 599;
  m_slots[slot].by_status[static_cast<size_t>(status - 100)].fetch_add(1, std::memory_order_relaxed);
}

void HttpMetrics::observe(size_t slot, int64_t micros)
{
  Slot& s = m_slots[slot];
  size_t i = 0;
  while (i < k_bounds_us.size() && micros > k_bounds_us[i]) ++i;
  s.buckets[i].fetch_add(1, std::memory_order_relaxed);
  s.sum_us.fetch_add(micros, std::memory_order_relaxed);
}

void HttpMetrics::write(std::string& out) const
{
  const size_t slots = m_routes + k_methods.size();
  write_family(out, "acmo_http_requests_total", "counter",
               "HTTP requests answered, by method, route (the route table's pattern) and status "
               "code.");
  for (size_t k = 0; k < slots; ++k) {
    const Slot& s = m_slots[k];
    for (size_t i = 0; i < s.by_status.size(); ++i) {
      const int64_t n = s.by_status[i].load(std::memory_order_relaxed);
      if (n == 0) continue;
      out += fmt::format("acmo_http_requests_total{{method=\"{}\",route=\"{}\",code=\"{}\"}} {}\n",
                         s.method, s.route, 100 + i, n);
    }
  }
  write_family(out, "acmo_http_request_duration_seconds", "histogram",
               "Time from a whole request to its answer, by method and route.");
  for (size_t k = 0; k < slots; ++k) {
    const Slot& s = m_slots[k];
    std::array<int64_t, k_bounds_us.size() + 1> counts{};
    int64_t total = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
      counts[i] = s.buckets[i].load(std::memory_order_relaxed);
      total += counts[i];
    }
    if (total == 0) continue;
    write_histogram(out, "acmo_http_request_duration_seconds",
                    fmt::format("method=\"{}\",route=\"{}\"", s.method, s.route), k_bounds_us,
                    counts, s.sum_us.load(std::memory_order_relaxed));
  }
}

namespace {

std::string read_whole(const char* path)
{
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The descriptors open in this process, less the one that reads the list.
int64_t count_open_fds()
{
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int64_t n = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;
}

} // namespace

std::optional<ProcessFigures> read_process_figures()
{
  // /proc/self/stat: "PID (COMM) STATE ..."; COMM may hold spaces and parentheses, so the
  // fields are counted from the last ')'. After it come field 3 (state) onwards: utime is
  // field 14, stime 15, starttime 22 (clock ticks after boot), vsize 23 (bytes), rss 24 (pages).
  const std::string stat = read_whole("/proc/self/stat");
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(paren + 1));
  std::vector<std::string> f{std::istream_iterator<std::string>(fields),
                             std::istream_iterator<std::string>()};
  if (f.size() < 22) return std::nullopt;
  auto field = [&f](int n) { return std::strtod(f[static_cast<size_t>(n - 3)].c_str(), nullptr); };
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));

  // /proc/stat's "btime": the boot, in seconds since the epoch.
  double boot = 0;
  std::istringstream lines(read_whole("/proc/stat"));
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("btime ", 0) == 0) boot = std::strtod(line.c_str() + 6, nullptr);
  }
  if (boot == 0) return std::nullopt;

  ProcessFigures p;
  p.cpu_seconds = (field(14) + field(15)) / ticks;
  p.start_time_seconds = boot + field(22) / ticks;
  p.virtual_bytes = static_cast<int64_t>(field(23));
  p.resident_bytes = static_cast<int64_t>(field(24) * page);
  p.open_fds = count_open_fds();
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    p.max_fds = limit.rlim_cur == RLIM_INFINITY ? INT64_MAX : static_cast<int64_t>(limit.rlim_cur);
  }
  return p;
}

void write_process_metrics(std::string& out)
{
  const std::optional<ProcessFigures> p = read_process_figures();
  if (!p) return;
  auto metric = [&out](std::string_view name, std::string_view type, std::string_view help,
                       auto value) {
    write_family(out, name, type, help);
    out += fmt::format("{} {}\n", name, value);
  };
  metric("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
         p->cpu_seconds);
  metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
         p->resident_bytes);
  metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
         p->virtual_bytes);
  if (p->open_fds >= 0) {
    metric("process_open_fds", "gauge", "Number of open file descriptors.", p->open_fds);
  }
  metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", p->max_fds);
  metric("process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.", p->start_time_seconds);
}

} // namespace acmo::daemon

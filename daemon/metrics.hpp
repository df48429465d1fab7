// What GET /metrics is made of (docs/http-api.md §3), apart from the API: Prometheus' text
// format (version 0.0.4), the figures of the HTTP requests answered, and the process's own
// figures from /proc. The endpoint itself, which gathers the queue's, the handler's and the
// cache's figures too, is Api::Impl::prometheus (daemon/api_monitoring.cpp).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace acmo::daemon {

// --- the text format ----------------------------------------------------------------------------

// A label value as the format has it: backslash, double quote and newline escaped.
std::string label_value(std::string_view text);
// A family's "# HELP" and "# TYPE" lines.
void write_family(std::string& out, std::string_view name, std::string_view type,
                  std::string_view help);
// A histogram's samples (not its HELP and TYPE): NAME_bucket{LABELS,le="..."} for each bound in
// microseconds and +Inf, cumulative, then NAME_sum in seconds and NAME_count. `labels` are the
// series' own labels, "" or `method="GET",...` without braces; `counts[i]` counts the
// observations up to bounds_us[i] and over the bound before, the last one those over every
// bound (counts has one more element than bounds_us).
void write_histogram(std::string& out, std::string_view name, std::string_view labels,
                     std::span<const int64_t> bounds_us, std::span<const int64_t> counts,
                     int64_t sum_us);

// --- HTTP requests ----------------------------------------------------------------------------

// The requests answered, by route and status, and their durations by route:
// acmo_http_requests_total{method,route,code} and acmo_http_request_duration_seconds{method,
// route}. The route is the route table's pattern, never the path, so that the series are
// bounded: one slot per route, and one per method of k_methods for requests that matched no
// route. Counting is a relaxed atomic add into the slot's arrays: no lock and no lookup on the
// path of a request.
class HttpMetrics
{
public:
  // The duration histogram's upper bounds: few, since every route has its own.
  static constexpr std::array<int64_t, 8> k_bounds_us = {500,    1'000,  5'000,   10'000,
                                                         25'000, 50'000, 250'000, 1'000'000};
  // The method label of a request that matched no route; "other" stands for any other method,
  // and for an answer the connection layer made before a method was known.
  static constexpr std::array<std::string_view, 8> k_methods = {
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"};
  // The route label of a request that matched no route (404, 405, OPTIONS, or an answer the
  // connection layer made itself).
  static constexpr std::string_view k_unmatched = "unmatched";

  // One slot per route, {method, pattern}, in the route table's order: slot i is route i.
  explicit HttpMetrics(const std::vector<std::pair<std::string_view, std::string_view>>& routes);

  // The slot of a request with this method that matched no route.
  size_t unmatched(std::string_view method) const;
  // A request answered with `status`; statuses outside 100-599 count as 599.
  void count(size_t slot, int status);
  // The time from a whole request to its answer.
  void observe(size_t slot, int64_t micros);
  // The two families, with the series of the slots that have answered a request.
  void write(std::string& out) const;

private:
  struct Slot {
    std::string method;
    std::string route;
    std::array<std::atomic<int64_t>, 500> by_status{}; // status 100 + i
    std::array<std::atomic<int64_t>, k_bounds_us.size() + 1> buckets{};
    std::atomic<int64_t> sum_us{0};
  };
  std::unique_ptr<Slot[]> m_slots;
  size_t m_routes = 0; // slots before the unmatched ones
};

// --- the process --------------------------------------------------------------------------------

// The process's figures, as the official Prometheus clients name them.
struct ProcessFigures {
  double cpu_seconds = 0;        // user and system time: process_cpu_seconds_total
  int64_t resident_bytes = 0;    // process_resident_memory_bytes
  int64_t virtual_bytes = 0;     // process_virtual_memory_bytes
  int64_t open_fds = 0;          // process_open_fds
  int64_t max_fds = 0;           // the soft limit of open files: process_max_fds
  double start_time_seconds = 0; // since the Unix epoch: process_start_time_seconds
};

// This process's figures, read from /proc/self and /proc/stat; nothing when /proc cannot be
// read (no /proc mounted).
std::optional<ProcessFigures> read_process_figures();
// The process_* families, or nothing when read_process_figures has none.
void write_process_metrics(std::string& out);

} // namespace acmo::daemon

// What GET /metrics is made of (daemon/metrics.*): the text format's histograms and label
// values, the HTTP figures by route, and the process's figures from /proc.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <ctime>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "daemon/metrics.hpp"

using namespace acmo::daemon;

TEST_CASE("Metrics: a histogram's buckets are cumulative and end with +Inf, _sum and _count",
          "[metrics]")
{
  const std::vector<int64_t> bounds = {1'000, 500'000};
  const std::vector<int64_t> counts = {2, 3, 1};
  std::string out;
  write_histogram(out, "x_seconds", R"(route="/a")", bounds, counts, 2'500'000);
  CHECK(out == "x_seconds_bucket{route=\"/a\",le=\"0.001\"} 2\n"
               "x_seconds_bucket{route=\"/a\",le=\"0.5\"} 5\n"
               "x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 6\n"
               "x_seconds_sum{route=\"/a\"} 2.5\n"
               "x_seconds_count{route=\"/a\"} 6\n");
  out.clear();
  write_histogram(out, "y_seconds", "", bounds, counts, 0);
  CHECK(out == "y_seconds_bucket{le=\"0.001\"} 2\n"
               "y_seconds_bucket{le=\"0.5\"} 5\n"
               "y_seconds_bucket{le=\"+Inf\"} 6\n"
               "y_seconds_sum 0\n"
               "y_seconds_count 6\n");
}

TEST_CASE("Metrics: a label value escapes backslash, double quote and newline", "[metrics]")
{
  CHECK(label_value("orders") == "orders");
  CHECK(label_value("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
}

TEST_CASE("Metrics: HTTP requests are counted by the route's pattern, never the path",
          "[metrics]")
{
  HttpMetrics m({{"GET", "/api/orders/:id"}, {"POST", "/api/orders"}});
  m.count(0, 200);
  m.observe(0, 300);
  m.count(0, 404);
  m.observe(0, 2'000'000);
  m.count(1, 202);
  m.count(m.unmatched("GET"), 404);
  m.count(m.unmatched("BREW"), 405);
  m.count(m.unmatched("other"), 408);
  m.count(1, 1000); // not a status: counted as 599
  std::string out;
  m.write(out);
  INFO(out);
  for (const char* line : {
         R"(acmo_http_requests_total{method="GET",route="/api/orders/:id",code="200"} 1)",
         R"(acmo_http_requests_total{method="GET",route="/api/orders/:id",code="404"} 1)",
         R"(acmo_http_requests_total{method="POST",route="/api/orders",code="202"} 1)",
         R"(acmo_http_requests_total{method="POST",route="/api/orders",code="599"} 1)",
         R"(acmo_http_requests_total{method="GET",route="unmatched",code="404"} 1)",
         R"(acmo_http_requests_total{method="other",route="unmatched",code="405"} 1)",
         R"(acmo_http_requests_total{method="other",route="unmatched",code="408"} 1)",
         R"(acmo_http_request_duration_seconds_bucket{method="GET",route="/api/orders/:id",le="0.0005"} 1)",
         R"(acmo_http_request_duration_seconds_bucket{method="GET",route="/api/orders/:id",le="1"} 1)",
         R"(acmo_http_request_duration_seconds_bucket{method="GET",route="/api/orders/:id",le="+Inf"} 2)",
         R"(acmo_http_request_duration_seconds_sum{method="GET",route="/api/orders/:id"} 2.0003)",
         R"(acmo_http_request_duration_seconds_count{method="GET",route="/api/orders/:id"} 2)"}) {
    CHECK_THAT(out, Catch::Contains(std::string(line) + "\n"));
  }
  // A route that observed no duration has no histogram series.
  CHECK_THAT(out, !Catch::Contains(R"(acmo_http_request_duration_seconds_count{method="POST")"));
}

TEST_CASE("Metrics: the process's figures come from /proc", "[metrics]")
{
  const auto before = read_process_figures();
  REQUIRE(before.has_value());
  CHECK(before->resident_bytes > 0);
  CHECK(before->virtual_bytes >= before->resident_bytes);
  CHECK(before->cpu_seconds >= 0);
  rlimit limit{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
  CHECK(static_cast<rlim_t>(before->max_fds) == limit.rlim_cur);
  // Started before now, and not before the test binary could have been built.
  const double now = static_cast<double>(std::time(nullptr));
  CHECK(before->start_time_seconds <= now + 1);
  CHECK(before->start_time_seconds > now - 86'400);
  // One more descriptor open is one more counted.
  const int fd = ::open("/dev/null", O_RDONLY);
  REQUIRE(fd >= 0);
  const auto after = read_process_figures();
  ::close(fd);
  REQUIRE(after.has_value());
  CHECK(after->open_fds == before->open_fds + 1);

  std::string out;
  write_process_metrics(out);
  for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                           "process_start_time_seconds"}) {
    CHECK_THAT(out, Catch::Contains("\n" + std::string(name) + " "));
  }
}

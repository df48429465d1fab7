// The time of a queue that processes on many hosts share: the PostgreSQL server's clock. Every
// ready time, visibility deadline, retry delay, deduplication window and timestamp the queue
// stores then means the same to each process, whatever its own host's clock says. A process
// reads that time through its monotonic clock since it last asked the server, and asks again
// every so often.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

namespace acmo {

class ServerTime
{
public:
  // How often the server is asked again.
  static constexpr int64_t k_interval_us = 30'000'000;
  // A sample whose round trip took over twice the one kept (plus this much) is dropped, while
  // the one kept is younger than k_stale_us: its error may be up to half its round trip.
  static constexpr int64_t k_slack_us = 1'000;
  static constexpr int64_t k_stale_us = 600'000'000;

  // Until the first sample, this host's clock.
  ServerTime();

  // Milliseconds since the Unix epoch, by the server's clock.
  int64_t now_ms() const;

  // Whether it is time to ask the server; true once for each time it is (the caller asks).
  bool claim();

  // The server's clock read `server_us` (microseconds since the epoch) between `sent_us` and
  // `received_us` of monotonic_us(): it is taken for the middle of that round trip. The next
  // claim() is due k_interval_us after `received_us`.
  void add(int64_t server_us, int64_t sent_us, int64_t received_us);

  // This process's monotonic clock, in microseconds.
  static int64_t monotonic_us();

private:
  std::atomic<int64_t> m_offset_us;    // the server's clock minus the monotonic one
  std::atomic<int64_t> m_asked_us;     // when the server was last asked (claim)
  std::mutex m_mu;
  int64_t m_kept_at_us;                // when the sample kept was taken; 0 none
  int64_t m_kept_rtt_us = 0;           // and its round trip
};

} // namespace acmo

// Token buckets, one per client key: `rate` tokens a second, at most `burst` in a bucket.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace acmo::daemon {

class RateLimiter
{
public:
  RateLimiter(double rate, double burst) : m_rate(rate), m_burst(burst > 0 ? burst : rate) {}
  bool enabled() const { return m_rate > 0; }

  // Take a token of `key`'s bucket at `now_us`: 0 when there was one, else how many whole
  // seconds until there would be (for Retry-After).
  int64_t take(const std::string& key, int64_t now_us);
  // Whether `key`'s bucket holds a token now, without taking one.
  bool has_token(const std::string& key, int64_t now_us);

private:
  struct Bucket {
    double tokens;
    int64_t at_us;
  };
  static constexpr size_t k_max_clients = 100'000;

  Bucket& refill(const std::string& key, int64_t now_us);
  void prune(int64_t now_us);

  double m_rate;
  double m_burst;
  std::mutex m_mu;
  std::unordered_map<std::string, Bucket> m_buckets;
};

} // namespace acmo::daemon

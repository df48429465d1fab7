// Time as the core sees it. Every timeout, delay and window in the queue is computed from a
// Clock, so tests move time by hand instead of sleeping.
#pragma once

#include <atomic>
#include <cstdint>

namespace acmo {

class Clock
{
public:
  virtual ~Clock() = default;
  // Milliseconds since the Unix epoch.
  virtual int64_t now_ms() const = 0;
  // Whether time passes by itself; a manual clock tells waiting loops not to wait for it.
  virtual bool is_real() const { return true; }
};

class SystemClock final : public Clock
{
public:
  int64_t now_ms() const override;
  // The process-wide instance.
  static const SystemClock& instance();
};

// A clock that stands still until a test moves it.
class ManualClock final : public Clock
{
public:
  explicit ManualClock(int64_t start_ms = 1'700'000'000'000) : m_now(start_ms) {}
  int64_t now_ms() const override { return m_now.load(); }
  bool is_real() const override { return false; }
  void advance_ms(int64_t delta) { m_now += delta; }
  void set_ms(int64_t value) { m_now = value; }

private:
  std::atomic<int64_t> m_now;
};

} // namespace acmo

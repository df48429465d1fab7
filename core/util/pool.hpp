// A bounded pool of connections shared by threads: the PostgreSQL store's and the Redis
// cache's. It knows nothing of what a connection is; its owner says how to open one, how
// long a caller waits for one, and what to answer when none comes free.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

#include "core/util/error.hpp"

namespace acmo {

struct PoolOptions {
  int size = 1;        // connections open at most: idle, in use, or being opened
  int64_t wait_ms = 0; // how long acquire waits for one while `size` are in use
  Error busy;          // what acquire answers when none came free in that time
};

// `Conn` owns one connection (a std::unique_ptr, say): destroying it closes the connection.
//
// acquire takes an idle connection (the one given back last), or opens one when fewer than
// `size` are open, or waits up to `wait_ms` for one to come back. A connection is opened and
// closed outside the lock, so a slow connect does not hold up callers that find an idle one;
// it counts towards `size` from before it is opened until after it is closed, so there are
// never more than `size`. A connection that failed to open frees its place at once, and the
// caller gets the error of `connect`.
//
// A lease gives its connection back when it ends, unless it was discarded, the owner's
// `usable` refuses it, or discard_all ran since it was taken: then it is closed. Every lease
// must end before the pool does; the pool closes the idle connections when it ends.
template<typename Conn> class Pool
{
public:
  using Connect = std::function<Expected<Conn>()>;
  using Usable = std::function<bool(Conn&)>;

  // `usable`, when given, is asked about each connection given back.
  Pool(PoolOptions options, Connect connect, Usable usable = {})
    : m_options(std::move(options)), m_connect(std::move(connect)), m_usable(std::move(usable))
  {
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  class Lease
  {
  public:
    Lease(Lease&& other) noexcept
      : m_pool(std::exchange(other.m_pool, nullptr)), m_conn(std::move(other.m_conn)),
        m_generation(other.m_generation), m_reused(other.m_reused), m_broken(other.m_broken)
    {
    }
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease()
    {
      if (m_pool != nullptr) m_pool->give_back(std::move(m_conn), m_generation, m_broken);
    }

    Conn& conn() { return m_conn; }
    // Taken from the idle connections rather than opened for this lease.
    bool reused() const { return m_reused; }
    // The connection broke: close it instead of giving it back.
    void discard() { m_broken = true; }

  private:
    friend class Pool;
    Lease(Pool& pool, Conn conn, uint64_t generation, bool reused)
      : m_pool(&pool), m_conn(std::move(conn)), m_generation(generation), m_reused(reused)
    {
    }

    Pool* m_pool;
    Conn m_conn;
    uint64_t m_generation;
    bool m_reused;
    bool m_broken = false;
  };

  Expected<Lease> acquire()
  {
    const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(m_options.wait_ms);
    std::unique_lock lock(m_mu);
    if (!m_cv.wait_until(lock, deadline,
                         [&] { return !m_idle.empty() || m_open < m_options.size; })) {
      return Unexpected(m_options.busy);
    }
    if (!m_idle.empty()) {
      Idle idle = std::move(m_idle.back());
      m_idle.pop_back();
      return Lease(*this, std::move(idle.conn), idle.generation, true);
    }
    ++m_open;
    const uint64_t generation = m_generation;
    lock.unlock();
    auto conn = m_connect();
    if (!conn) {
      lock.lock();
      --m_open;
      lock.unlock();
      m_cv.notify_one();
      return Unexpected(conn.error());
    }
    return Lease(*this, std::move(*conn), generation, false);
  }

  // Close the idle connections: after a connection broke, they very likely went with the
  // same server, and are better closed than tried one by one.
  void discard_idle() { drop_idle(false); }

  // Close the idle connections, and the ones in use (or being opened) when they come back.
  void discard_all() { drop_idle(true); }

  // Connections open now: idle, in use, or being opened.
  int open_connections() const
  {
    std::lock_guard lock(m_mu);
    return m_open;
  }

private:
  struct Idle {
    Conn conn;
    uint64_t generation;
  };

  void give_back(Conn conn, uint64_t generation, bool broken)
  {
    if (!broken && (!m_usable || m_usable(conn))) {
      std::unique_lock lock(m_mu);
      if (generation == m_generation) {
        m_idle.push_back(Idle{std::move(conn), generation});
        lock.unlock();
        m_cv.notify_one();
        return;
      }
    }
    {
      Conn closing = std::move(conn); // closed outside the lock: closing may wait on the network
    }
    {
      std::lock_guard lock(m_mu);
      --m_open;
    }
    m_cv.notify_one();
  }

  void drop_idle(bool in_use_too)
  {
    std::vector<Idle> closing;
    {
      std::lock_guard lock(m_mu);
      if (in_use_too) ++m_generation;
      closing.swap(m_idle);
      m_open -= static_cast<int>(closing.size());
    }
    m_cv.notify_all();
  }

  const PoolOptions m_options;
  const Connect m_connect;
  const Usable m_usable;
  mutable std::mutex m_mu;
  std::condition_variable m_cv;
  std::vector<Idle> m_idle;
  int m_open = 0;            // idle, leased, or being opened
  uint64_t m_generation = 0; // bumped by discard_all: older connections are not kept
};

} // namespace acmo

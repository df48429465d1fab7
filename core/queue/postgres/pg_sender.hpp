// The sending side of the queue on PostgreSQL (PgQueue): group commit of the sends of one
// process, and bulk sends, on connections of their own in libpq's pipeline mode, made durable
// as queue.durability asks (docs/queue.md).
//
// Each statement of sends calls acmo_send (schema.cpp) for many requests. The concurrent
// sends of a process share a statement: the first sender to find no leader sends every request
// queued so far, with a second statement already sent behind the first, each committing
// durably with queue.durability = "full". A bulk send (`acmo send --file`) sends statements of
// 200 requests, two in flight on each of two connections when they share no group, committing
// without waiting for the disk; with queue.durability = "full", one flush of the WAL at the end
// makes them durable before any is answered.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <pqxx/connection>

#include "core/queue/queue.hpp"

namespace acmo {

class PgSender
{
public:
  // What the sender needs of its queue.
  class Host
  {
  public:
    virtual ~Host() = default;
    // The settings every connection of the queue starts with (commits waiting for the disk
    // when `synchronous`), as statements without parameters.
    virtual std::string setup_sql(bool synchronous) const = 0;
    // The error a database exception means; `discard` says whether its connection is broken.
    virtual Error error_of(const std::exception& e, bool& discard) const = 0;
    // The queue's time (the server's clock).
    virtual int64_t now_ms() const = 0;
    // Wake the long polls of this process: messages were sent.
    virtual void notify_waiters() = 0;
    // A connection set up alike, for a role of its own (flushing the WAL).
    virtual std::unique_ptr<pqxx::connection> own_connection(bool synchronous) = 0;
  };

  // The queue to send to: its server's URL (for messages), libpq's connection string, its
  // notification channel and its id, and the queue's options (dedup, durability).
  struct Target {
    std::string url;
    std::string conninfo;
    std::string channel;
    int64_t queue_id = 0;
    QueueOptions options;
  };

  PgSender(Host& host, Target target);
  PgSender(const PgSender&) = delete;
  PgSender& operator=(const PgSender&) = delete;
  ~PgSender();

  // Send `count` requests, each durable before it is answered (queue.durability = "full"),
  // sharing statements with the concurrent sends of this process (Queue::send_batch).
  std::vector<Expected<SendResult>> send(const SendRequest* requests, size_t count);
  // Send many requests, as `acmo send --file` does (Queue::send_bulk).
  std::vector<Expected<SendResult>> send_bulk(const std::vector<SendRequest>& requests);
  // The statements of sends committed so far, and the requests in them.
  CommitStats commit_stats() const;

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace acmo

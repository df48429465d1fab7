#include "core/queue/postgres/pg_sender.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <fmt/core.h>
#include <pqxx/pqxx>

#include "core/queue/limits.hpp"
#include "core/queue/postgres/pg_pipeline.hpp"
#include "core/store/pg_binary.hpp"
#include "core/store/pg_conninfo.hpp"
#include "core/store/pg_text.hpp"
#include "core/util/ids.hpp"
#include "core/util/log.hpp"
#include "core/util/sha256.hpp"

namespace acmo {

namespace {

// Messages of send_bulk per statement, at most: each statement costs a round trip, a commit
// and the locking of its groups, so small ones send fewer messages a second (50 a statement
// about a fifth fewer); past a few hundred acmo_send's own work per message grows (1,000 a
// statement spent half as long again on each as 200).
constexpr size_t k_bulk_chunk = 200;
constexpr size_t k_bulk_bytes = 16u << 20;  // and their bodies' bytes
// Connections that send_bulk's statements run on at once, when they share no group.
constexpr size_t k_bulk_lanes = 2;
// How many times a statement of sends the server rolled back is sent again (resend).
constexpr int k_send_rollback_retries = 3;

// The key a dedup id is filed under in the dedup history: the first 16 bytes of its SHA-256, in
// hex. The embedded queue files it under the same 16 bytes (sqlite_queue::dedup_key), which lets
// `acmo queue move` carry its history over.
std::string dedup_key_hex(std::string_view dedup_id) { return sha256_hex(dedup_id).substr(0, 32); }

// A send request, checked, with what can be computed before it goes to the server.
struct PreparedSend : limits::SendDedup {
  const SendRequest* request = nullptr;
  std::string dedup_key;      // the dedup history's key: dedup_key_hex(dedup_id)
  MessageIdBytes message_id;  // the id it gets if accepted
};

// What an error of a send whose outcome is unknown ends with.
constexpr const char* k_send_in_doubt =
  "; the message may or may not be stored: retry with the same deduplication id";

// One request of a group commit of sends.
struct SendOp {
  std::vector<PreparedSend> items;
  std::vector<Expected<SendResult>> results;
  std::optional<Error> error;
  // Answered (under the group commit's mutex). Each op waits on its own condition variable,
  // so that a commit wakes only the senders it answered and the next leader; a leader wakes
  // them after releasing the mutex (one woken while it is held blocks on it straight away),
  // which the op's shared ownership keeps safe once its sender has returned.
  bool done = false;
  // In a leader's batch (under the mutex): it waits for done only, never to lead. Without it,
  // a sender whose op a leader had taken woke when that leader handed the lead on, led a batch
  // of its own, and returned before its op was answered, which the first leader then wrote to
  // on a stack frame that was gone.
  bool taken = false;
  // The commit that make_durable must cover (0 when nothing needs flushing): send_bulk's
  // statements commit without waiting for the disk, and it makes them durable itself once all
  // are committed.
  uint64_t generation = 0;
  // The key of the server process that committed it (SendPipe::key).
  int64_t backend = 0;
  // Set (under the mutex) when the leader, going on to the next batch, hands this op's sender
  // the work of answering its batch (SendBatch::answer).
  std::shared_ptr<struct SendBatch> answer;
  std::condition_variable cv;
};

// A connection that sends with acmo_send (open_send_pipe), in libpq's pipeline mode, and
// the key of the advisory lock its server process holds. A synchronous one commits each
// statement durably (synchronous_commit on) before it answers.
struct SendPipe {
  std::unique_ptr<PgPipeline> conn;
  bool synchronous = false;
  int64_t key = 0;
  uint64_t epoch = 0; // connections made so far: a statement's result is read on its own
};

// One statement of sends: its ops, and once sent (dispatch), what reading its result (collect)
// needs.
struct SendFlight {
  std::vector<SendOp*> ops;
  size_t count = 0;  // requests
  int64_t now = 0;   // the time it was sent with
  bool sent = false; // and whether it was (then it is in doubt until its result is read)
  uint64_t epoch = 0; // on which of the SendPipe's connections
  bool lost = false;  // that connection broke before its result was read
  bool rolled_back = false; // or the server rolled it back: it took no effect
};

// The ops of one statement of sends, read and waiting for their senders to be woken.
struct SendBatch {
  std::vector<std::shared_ptr<SendOp>> ops;
};

} // namespace

struct PgSender::Impl {
  Host& host;
  const std::string url;
  const std::string conninfo;
  const std::string channel;
  const int64_t queue_id;
  const QueueOptions options;

  // Group commit of sends: the first sender to find no leader sends every request queued so
  // far in one statement on the sending connection, which only the leader uses. With
  // queue.durability = "full" each statement commits durably: waiting for the disk in the
  // commit, with the next statement already sent behind it, answers sooner than a separate
  // flush of the WAL that a batch would hand to another connection and wait for.
  SendPipe sender;
  // send_bulk's statements, on connections of their own (send_pipelined), one send_bulk at a
  // time.
  std::mutex bulk_mu;
  std::array<SendPipe, k_bulk_lanes> bulk_senders;
  bool bulk_lane_refused = false; // one of them could not be made (under bulk_mu)
  std::mutex send_mu;
  std::vector<std::shared_ptr<SendOp>> send_pending;
  bool send_leading = false;
  // The leader waits for a statement's result, and for ops to queue to send meanwhile: a
  // sender that queues one then writes to send_wake_fd.
  bool send_polling = false;
  int send_wake_fd = -1;
  std::atomic<int64_t> committed_transactions{0};
  std::atomic<int64_t> committed_requests{0};

  // Durability (queue.durability = "full") of send_bulk without holding the groups' locks
  // through the flush of the WAL: its statements commit without waiting for the disk, and it
  // waits for a flush that covers their commits, made by a write that does wait (flush_wal, on
  // a connection of its own). While one statement waits for the disk the next one runs, and one
  // flush covers every commit made before it began.
  //
  // A flush covers a commit only if the server did not crash in between: a crash loses the
  // commits whose WAL was not yet written, and a flush on the restarted server covers none of
  // them. So the sending connection's server process holds an advisory lock of a random key
  // for its life, each batch remembers the key of the process that committed it, and a flush
  // also checks that each such key is still held: a crash ends every process and frees every
  // lock. The commits of a process no longer running are in doubt (failed_through).
  std::unique_ptr<pqxx::connection> flusher;
  std::mutex sync_mu;
  std::condition_variable sync_cv;
  uint64_t committed_generation = 0;
  uint64_t synced_generation = 0;
  uint64_t failed_through = 0; // commits up to this one were made by a backend that ended
  std::map<int64_t, uint64_t> unflushed_backends; // by key: the last commit of each
  bool syncing = false;

  Impl(Host& h, Target t)
    : host(h), url(std::move(t.url)), conninfo(std::move(t.conninfo)),
      channel(std::move(t.channel)), queue_id(t.queue_id), options(std::move(t.options))
  {
    sender.synchronous = options.durability_full;
    send_wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl()
  {
    if (send_wake_fd >= 0) ::close(send_wake_fd);
  }

  // Check a request, fill in its dedup id and body fingerprint; all before the server.
  Expected<PreparedSend> prepare_send(const SendRequest& request) const
  {
    auto checked = limits::check_send(request, options.content_based_dedup);
    if (!checked) return Unexpected(checked.error());
    std::string key = dedup_key_hex(checked->dedup_id);
    return PreparedSend{std::move(*checked), &request, std::move(key), new_message_id_bytes()};
  }

  // Hand `op` to the group commit and wait until it is answered.
  //
  // The sender that finds no leader leads: it sends every op queued so far in one statement.
  // While that statement runs (and waits for the disk in its commit), ops queued meanwhile go
  // in a second one on the same connection, which the server starts as soon as it has finished
  // the first, rather than waiting for the client to read a result and build the next
  // statement. The leader goes on so up to k_max_led statements, and hands the waking of each
  // batch's senders to one of them: handing the lead on instead cost the next statement the
  // wake-up of another thread.
  struct Flying {
    std::shared_ptr<SendBatch> batch;
    SendFlight flight;
    bool read = false;           // its result is read (or it was never sent)
    std::optional<Error> error;  // and that result's error
  };

  void submit(const std::shared_ptr<SendOp>& op_ptr)
  {
    constexpr int k_max_led = 4;   // bounds what the leader's own caller waits for others
    constexpr size_t k_depth = 2;  // statements in flight
    SendOp& op = *op_ptr;
    std::unique_lock lock(send_mu);
    send_pending.push_back(op_ptr);
    if (send_polling) {
      const uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(send_wake_fd, &one, sizeof one);
      send_polling = false;
    }
    op.cv.wait(lock, [&] { return op.done || op.answer || (!op.taken && !send_leading); });
    if (op.done) return;
    if (op.answer) {
      auto batch = std::move(op.answer);
      lock.unlock();
      answer(*batch);
      return; // op is one of the batch's
    }
    send_leading = true;
    std::deque<Flying> flying;
    std::shared_ptr<SendBatch> mine; // a batch of this sender's own op alone, answered last
    std::shared_ptr<SendBatch> last; // the batch read when the leader stops
    int led = 0;
    for (;;) {
      // Nothing new goes while a statement read with an error waits to be sent again.
      const bool room = led < k_max_led && flying.size() < k_depth
                        && std::none_of(flying.begin(), flying.end(),
                                        [](const Flying& f) { return f.read; });
      if (room && !send_pending.empty()) {
        ++led;
        Flying f;
        f.batch = std::make_shared<SendBatch>();
        f.batch->ops.swap(send_pending);
        for (const auto& o : f.batch->ops) {
          o->taken = true;
          f.flight.ops.push_back(o.get());
        }
        lock.unlock();
        auto error = dispatch(sender, f.flight);
        if (error && !f.flight.sent) {
          f.read = true;
          f.error = std::move(error);
        } // else lost, if sending broke the connection: read below
        flying.push_back(std::move(f));
        lock.lock();
        continue;
      }
      if (flying.empty()) break; // never: after a read the loop goes on only when it can send
      // Wait for the oldest statement's result, or, with room for another statement, for ops
      // to queue.
      if (room && !flying.front().read && sender.conn && !sender.conn->ready()) {
        send_polling = true;
        lock.unlock();
        const bool readable = wait_readable(sender.conn->socket());
        lock.lock();
        send_polling = false;
        if (!readable) continue;
      }
      lock.unlock();
      Flying f = std::move(flying.front());
      flying.pop_front();
      if (!f.read) f.error = collect(sender, f.flight);
      if (f.error) {
        // Sending again, alone or on a new connection, needs nothing else in flight.
        for (auto& g : flying) {
          if (g.read) continue;
          g.error = collect(sender, g.flight);
          g.read = true;
        }
      }
      settle(f.flight, std::move(f.error));
      if (std::any_of(f.flight.ops.begin(), f.flight.ops.end(),
                      [](const SendOp* o) { return !o->error; })) {
        host.notify_waiters();
      }
      lock.lock();
      if (flying.empty() && (send_pending.empty() || led >= k_max_led)) {
        last = std::move(f.batch);
        break;
      }
      // Going on leading: one of the batch's senders (not this one, which answers only once
      // it stops leading) answers it.
      std::shared_ptr<SendOp> deputy;
      for (const auto& o : f.batch->ops) {
        if (o != op_ptr) {
          deputy = o;
          break;
        }
      }
      if (deputy) {
        deputy->answer = std::move(f.batch);
        lock.unlock();
        deputy->cv.notify_one();
        lock.lock();
      } else {
        mine = std::move(f.batch);
      }
    }
    // Hand the lead to the first op queued meanwhile, answer the last batch and any of this
    // sender's own, then wait for this sender's op, which a deputy may still be answering.
    send_leading = false;
    auto next = send_pending.empty() ? nullptr : send_pending.front();
    lock.unlock();
    if (next) next->cv.notify_one();
    if (last) answer(*last);
    if (mine) answer(*mine);
    lock.lock();
    op.cv.wait(lock, [&] { return op.done; });
  }

  // Wait until `socket` has something to read (true) or an op is queued (false).
  bool wait_readable(int socket)
  {
    pollfd fds[2] = {{socket, POLLIN, 0}, {send_wake_fd, POLLIN, 0}};
    for (;;) {
      const int n = ::poll(fds, 2, 1000);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || (fds[0].revents != 0)) return true;
      if (fds[1].revents != 0) {
        uint64_t count = 0;
        [[maybe_unused]] auto r = ::read(send_wake_fd, &count, sizeof count);
        return false;
      }
      return true; // a second without either: read the result, waiting for it
    }
  }

  // Finish a statement of sends whose result was read with `error`, nothing else being in
  // flight on the sending connection when there is one: one rolled back or lost with its
  // connection is sent again when that is safe (resend), and should it fail for a reason that
  // is not the server's, each of its requests is sent alone, so that one bad request cannot
  // fail its neighbours.
  void settle(SendFlight& flight, std::optional<Error> error)
  {
    error = resend(sender, flight, std::move(error));
    if (error && flight.ops.size() > 1 && error->code == Errc::internal) {
      for (auto* op : flight.ops) {
        SendFlight single{{op}};
        set_error(single, send_statement(sender, single));
      }
    } else {
      set_error(flight, std::move(error));
    }
  }

  // Send `flight` on `pipe`, with nothing else in flight there, and read its result.
  std::optional<Error> send_statement(SendPipe& pipe, SendFlight& flight)
  {
    auto error = dispatch(pipe, flight);
    if (!error) error = collect(pipe, flight);
    return resend(pipe, flight, std::move(error));
  }

  static void set_error(SendFlight& flight, std::optional<Error> error)
  {
    if (!error) return;
    for (auto* o : flight.ops) o->error = error;
  }

  // A commit that make_durable must cover, `op`'s (which remembers the server process that
  // committed it): its generation.
  uint64_t note_commit(const SendOp& op)
  {
    std::lock_guard sync_lock(sync_mu);
    const uint64_t generation = ++committed_generation;
    unflushed_backends[op.backend] = generation;
    return generation;
  }

  // Answer a batch the leader sent: wake its senders.
  void answer(SendBatch& batch)
  {
    std::unique_lock lock(send_mu);
    for (const auto& o : batch.ops) o->done = true;
    lock.unlock();
    for (const auto& o : batch.ops) o->cv.notify_one();
  }

  // Wait until the WAL is on disk up to commit `generation`, flushing it if no one else is.
  std::optional<Error> make_durable(uint64_t generation)
  {
    std::unique_lock lock(sync_mu);
    while (synced_generation < generation && generation > failed_through) {
      if (syncing) {
        sync_cv.wait(lock);
        continue;
      }
      syncing = true;
      const uint64_t target = committed_generation;
      const auto backends = unflushed_backends;
      lock.unlock();
      std::vector<bool> running;
      auto failure = flush_wal(backends, running);
      lock.lock();
      syncing = false;
      sync_cv.notify_all();
      if (failure) return failure;
      size_t i = 0;
      for (const auto& [backend, last] : backends) {
        if (!running[i++]) failed_through = std::max(failed_through, last);
        auto it = unflushed_backends.find(backend);
        if (it != unflushed_backends.end() && it->second == last) unflushed_backends.erase(it);
      }
      synced_generation = std::max(synced_generation, target);
    }
    if (generation <= failed_through) {
      return Error(Errc::unavailable,
                   fmt::format("the PostgreSQL server process that stored the message at {} "
                               "ended before its write reached the disk (the server crashed or "
                               "restarted, or the connection was cut){}",
                               redact_pg_url(url), k_send_in_doubt),
                   "queue.url");
    }
    return std::nullopt;
  }

  // Make every commit so far durable: with synchronous_commit on, the commit of a transaction
  // that wrote to the WAL waits until the WAL is flushed up to its commit record, which covers
  // every commit before it. The transaction writes a logical decoding message (one small WAL
  // record, no table, no lock, for any role; ignored by subscribers that do not ask for
  // messages). A transaction that only takes a transaction id writes no WAL but its commit
  // record, and PostgreSQL commits it without waiting for the disk whatever
  // synchronous_commit says.
  //
  // The same statement says which of `backends` (by key) are still running, in `running`: the
  // flush covers their commits. A connection found broken is made again once.
  std::optional<Error> flush_wal(const std::map<int64_t, uint64_t>& backends,
                                 std::vector<bool>& running)
  {
    PgArray keys;
    for (const auto& [key, last] : backends) keys.add(key);
    for (int attempt = 0;; ++attempt) {
      try {
        if (!flusher) flusher = host.own_connection(true);
        pqxx::nontransaction tx(*flusher);
        // One letter per backend, in their order: r running (its lock is held, so this
        // transaction cannot take it), g gone.
        auto row = tx.exec_params1(
          "SELECT pg_logical_emit_message(true, 'acmo', ''), array_to_string(ARRAY("
          "SELECT CASE WHEN pg_try_advisory_xact_lock(b.k) THEN 'g' ELSE 'r' END"
          " FROM unnest($1::bigint[]) WITH ORDINALITY AS b(k, n) ORDER BY b.n), '')",
          keys.text());
        running.clear();
        for (char c : row[1].as<std::string>()) running.push_back(c == 'r');
        if (running.size() != backends.size()) {
          return Error(Errc::internal, "the flush of the WAL answered a different number of rows");
        }
        return std::nullopt;
      } catch (const std::exception& e) {
        flusher.reset();
        bool discard = false;
        Error error = host.error_of(e, discard);
        if (discard && attempt == 0) continue;
        error.message += k_send_in_doubt;
        return error;
      }
    }
  }

  // After `error`, a statement of sends is sent again, alone, when that is safe; nothing else
  // may be in flight on `pipe`'s connection.
  // - One the server rolled back took no effect: up to k_send_rollback_retries times. That is a
  //   serialization failure, or a deadlock with a transaction of another kind (sends never
  //   deadlock with each other: acmo_send takes the groups' rows in name order, and starts
  //   again, letting go of them, when another made one of those it makes), which the server
  //   breaks by failing one of them.
  // - One lost with its connection, once, on a new connection, when the dedup window makes
  //   that safe: had the first attempt committed, its messages are found as duplicates of
  //   themselves (the message ids are the ones this process drew), and reported as sent.
  std::optional<Error> resend(SendPipe& pipe, SendFlight& flight, std::optional<Error> error)
  {
    int rollbacks = 0;
    bool lost_once = false;
    while (error) {
      if (flight.rolled_back && rollbacks < k_send_rollback_retries) {
        ++rollbacks;
      } else if (flight.lost && !lost_once && options.dedup_window_ms > 0) {
        lost_once = true;
      } else {
        break;
      }
      error = dispatch(pipe, flight);
      if (!error) error = collect(pipe, flight);
    }
    return error;
  }

  // Whether `a` and `b` send to a group in common.
  static bool share_a_group(const SendFlight& a, const SendFlight& b)
  {
    std::unordered_set<std::string_view> groups;
    for (const auto* op : a.ops) {
      for (const auto& p : op->items) groups.insert(p.request->group_id);
    }
    for (const auto* op : b.ops) {
      for (const auto& p : op->items) {
        if (groups.count(p.request->group_id) != 0) return true;
      }
    }
    return false;
  }

  // Open `pipe`'s connection: its server process takes the advisory lock of a random key, held
  // for its life (flush_wal), and commits without waiting for the disk (make_durable).
  void open_send_pipe(SendPipe& pipe)
  {
    auto conn = std::make_unique<PgPipeline>(conninfo, host.setup_sql(pipe.synchronous));
    int64_t key = 0;
    while (key == 0) key = static_cast<int64_t>(random_u64());
    conn->exec("SELECT pg_advisory_lock($1)", {std::to_string(key)});
    conn->prepare("acmo_send",
                  "SELECT o_kind, o_seq, o_id, o_expires FROM acmo_send($1, $2, $3, $4,"
                  " $5::text[], $6::text[], $7::text[], $8::boolean[], $9::text[],"
                  " $10::bigint[], $11::uuid[], $12::boolean[], $13::boolean[])");
    conn->start();
    pipe.conn = std::move(conn);
    pipe.key = key;
    ++pipe.epoch;
  }

  // Send the requests of `flight` on `pipe` in one statement, without waiting for its result
  // (collect reads it), opening the connection first if there is none. A statement not sent
  // is not in doubt.
  std::optional<Error> dispatch(SendPipe& pipe, SendFlight& flight)
  {
    using Type = PgBinaryArray::Type;
    PgBinaryArray groups(Type::text), dedup(Type::text), keys(Type::text),
      content(Type::boolean), bodies(Type::text), hashes(Type::bigint), ids(Type::uuid),
      same(Type::boolean), unless(Type::boolean);
    flight.count = 0;
    flight.sent = false;
    flight.lost = false;
    flight.rolled_back = false;
    try {
      for (const auto* op : flight.ops) {
        for (const auto& p : op->items) {
          groups.add(p.request->group_id);
          dedup.add(p.dedup_id);
          keys.add(p.dedup_key);
          content.add_bool(p.content_based);
          bodies.add(p.request->body);
          hashes.add(p.body_hash);
          ids.add_uuid(p.message_id);
          same.add_bool(p.request->same_body);
          unless.add_bool(p.request->unless_duplicate.has_value());
          ++flight.count;
        }
      }
      if (flight.count == 0) return std::nullopt;
      flight.now = host.now_ms();
      if (!pipe.conn) open_send_pipe(pipe);
      // Sent, the statement is in doubt until its result is read.
      flight.sent = true;
      flight.epoch = pipe.epoch;
      pipe.conn->send("acmo_send",
                      {std::to_string(queue_id), std::to_string(flight.now),
                       std::to_string(options.dedup_window_ms), channel, std::move(groups),
                       std::move(dedup), std::move(keys), std::move(content), std::move(bodies),
                       std::move(hashes), std::move(ids), std::move(same), std::move(unless)});
      return std::nullopt;
    } catch (const std::exception& e) {
      return pipe_error(pipe, flight, e);
    }
  }

  // The error of a statement of sends on `pipe`: a connection found broken is dropped, and a
  // statement sent on it is lost: it may or may not have committed.
  Error pipe_error(SendPipe& pipe, SendFlight& flight, const std::exception& e)
  {
    bool discard = false;
    Error error = host.error_of(e, discard);
    flight.rolled_back =
      flight.sent && dynamic_cast<const pqxx::transaction_rollback*>(&e) != nullptr;
    if (discard || (pipe.conn && !pipe.conn->is_open())) {
      pipe.conn.reset();
      if (flight.sent) {
        flight.lost = true;
        error.message += k_send_in_doubt;
      }
    }
    return error;
  }

  // Read the result of `flight`, the oldest statement sent on `pipe` and not yet read, into
  // its ops' results (or return its error, which it sets on no op).
  std::optional<Error> collect(SendPipe& pipe, SendFlight& flight)
  {
    if (!flight.sent) return std::nullopt;
    if (!pipe.conn || pipe.epoch != flight.epoch) {
      // Its connection broke while an earlier statement's result was read.
      flight.lost = true;
      return Error(Errc::unavailable,
                   fmt::format("the connection to PostgreSQL at {} broke{}", redact_pg_url(url),
                               k_send_in_doubt),
                   "queue.url");
    }
    try {
      const PgRows rows = pipe.conn->take();
      if (static_cast<size_t>(rows.size()) != flight.count) {
        return Error(Errc::internal, "acmo_send answered a different number of rows");
      }
      const int64_t now = flight.now;
      int i = 0;
      for (auto* op : flight.ops) {
        op->backend = pipe.key;
        op->results.clear();
        for (const auto& p : op->items) {
          const int row = i++;
          const std::string_view kind = rows.get(row, 0);
          SendResult r;
          r.dedup_id = p.dedup_id;
          r.seq = rows.get_int(row, 1);
          r.message_id = std::string(rows.get(row, 2));
          if (kind == "refused" && p.request->unless_duplicate) {
            op->results.emplace_back(Unexpected(*p.request->unless_duplicate));
          } else if (kind == "refused") {
            op->results.emplace_back(
              make_error(Errc::internal, "acmo_send refused a request that allowed a new message"));
          } else if (kind == "conflict") {
            const int64_t age = (now - (rows.get_int(row, 3) - options.dedup_window_ms)) / 1000;
            op->results.emplace_back(make_error(
              Errc::conflict,
              fmt::format("the deduplication id \"{}\" was used {} s ago for a different "
                          "message (message {}); a retry must send the same request, and a new "
                          "request needs a new id",
                          p.dedup_id, age, r.message_id),
              "deduplicationId"));
          } else {
            r.duplicate =
              kind == "duplicate" && r.message_id != format_message_id(p.message_id);
            op->results.emplace_back(std::move(r));
          }
        }
      }
      ++committed_transactions;
      committed_requests += static_cast<int64_t>(flight.ops.size());
      return std::nullopt;
    } catch (const std::exception& e) {
      return pipe_error(pipe, flight, e);
    }
  }

  // An op of those of `count` requests that pass prepare_send; the others' errors go to
  // `results` (from results[0]), and where[k] is the request of the op's k-th item.
  std::shared_ptr<SendOp> prepare_op(const SendRequest* requests, size_t count,
                                     Expected<SendResult>* results, std::vector<size_t>& where)
  {
    auto op = std::make_shared<SendOp>();
    for (size_t i = 0; i < count; ++i) {
      auto prepared = prepare_send(requests[i]);
      if (prepared) {
        op->items.push_back(std::move(*prepared));
        where.push_back(i);
      } else {
        results[i] = Unexpected(prepared.error());
      }
    }
    return op;
  }

  // Put an op's outcome into `results`, at the places `where` says.
  static void answer_op(SendOp& op, const std::vector<size_t>& where,
                        Expected<SendResult>* results)
  {
    for (size_t k = 0; k < where.size(); ++k) {
      results[where[k]] = op.error ? Expected<SendResult>(Unexpected(*op.error))
                                   : std::move(op.results[k]);
    }
  }

  // Send `count` requests in one op of the group commit, durable when answered.
  std::vector<Expected<SendResult>> send_many(const SendRequest* requests, size_t count)
  {
    std::vector<Expected<SendResult>> results(count);
    std::vector<size_t> where;
    auto op = prepare_op(requests, count, results.data(), where);
    if (op->items.empty()) return results;
    submit(op);
    answer_op(*op, where, results.data());
    return results;
  }

  // send_bulk's statements, one op each, in order, on the connections of bulk_senders, two in
  // flight on each at a time: the server runs one while this process reads the result of the
  // one before and builds the one after. Each op committed gets the commit make_durable must
  // cover (its generation), unless queue.durability is "normal".
  //
  // Statements that share no group and no deduplication id may commit in either order, and
  // one server process is the limit of a connection: such statements go on separate
  // connections, and run at once. A statement that shares one with a statement in flight goes
  // on that statement's connection, which runs its statements in order; one that shares with
  // statements in flight on two waits until one of them is read. So each group's messages
  // commit in their order and a duplicate after its original, and a send_bulk to one group
  // uses one connection.
  //
  // A connection that breaks loses every statement in flight on it: each is sent again, in
  // order, alone, when the dedup window makes that safe (resend). A statement the server rolled
  // back is sent again once the statements after it on the connection are read, unless one of
  // them committed (or may have) messages to a group of its own, which would come before its
  // messages. A statement the server refuses for a reason of its own (Errc::internal) fails its
  // requests together: the statement after it may have committed already, so sending them
  // again one by one, as the group commit does, would put them behind it.
  void send_pipelined(const std::vector<SendOp*>& ops)
  {
    constexpr size_t k_depth = 2;
    std::lock_guard lock(bulk_mu);
    std::vector<SendFlight> flights;
    flights.reserve(ops.size());
    for (auto* op : ops) flights.push_back(SendFlight{{op}});
    // What a statement's messages must not overtake: its groups and deduplication keys, each
    // hashed once (two that collide only make their statements wait for each other).
    std::vector<std::vector<size_t>> keys(flights.size());
    const std::hash<std::string_view> hash;
    for (size_t k = 0; k < flights.size(); ++k) {
      for (const auto& p : flights[k].ops[0]->items) {
        keys[k].push_back(hash(p.request->group_id));
        keys[k].push_back(hash(p.dedup_key));
      }
    }
    struct Lane {
      std::deque<size_t> flying;
      std::unordered_map<size_t, int> keys; // of the statements in flight
      bool down = false; // its connection could not be made: the others carry its statements
    };
    std::array<Lane, k_bulk_lanes> lanes;
    // The lane statement `k` must go on, or (sharing nothing in flight) the one with the fewest
    // statements in flight; nullopt when it shares keys with statements on two.
    auto lane_for = [&](size_t k) -> std::optional<size_t> {
      std::optional<size_t> shared, idlest;
      for (size_t l = 0; l < lanes.size(); ++l) {
        if (lanes[l].down) continue;
        if (!idlest || lanes[l].flying.size() < lanes[*idlest].flying.size()) idlest = l;
        if (lanes[l].flying.empty()) continue;
        const bool shares = std::any_of(keys[k].begin(), keys[k].end(), [&](auto key) {
          return lanes[l].keys.count(key) != 0;
        });
        if (shares && shared) return std::nullopt;
        if (shares) shared = l;
      }
      return shared ? shared : idlest;
    };
    auto land = [&](Lane& lane, size_t k) {
      for (auto key : keys[k]) {
        auto it = lane.keys.find(key);
        if (--it->second == 0) lane.keys.erase(it);
      }
    };
    bool any = false;
    auto finish = [&](SendFlight& flight, std::optional<Error> error) {
      SendOp& op = *flight.ops[0];
      if (error) {
        op.error = std::move(error);
        return;
      }
      any = true;
      if (options.durability_full) op.generation = note_commit(op);
    };
    size_t next = 0;
    for (;;) {
      // The next statement goes on its lane's connection, or makes one when none is in flight.
      if (next < flights.size()) {
        const auto l = lane_for(next);
        if (l && lanes[*l].flying.size() < k_depth
            && (bulk_senders[*l].conn || lanes[*l].flying.empty())) {
          const size_t k = next;
          auto error = dispatch(bulk_senders[*l], flights[k]);
          // A connection that cannot be made (the server's max_connections reached, say) leaves
          // the statement to the other connections, if one is up.
          if (error && !flights[k].sent && !bulk_senders[*l].conn
              && std::count_if(lanes.begin(), lanes.end(), [](auto& o) { return !o.down; }) > 1) {
            lanes[*l].down = true;
            if (!bulk_lane_refused) { // once a process: each part of a file would say it again
              log::warn({"bulk_send_connection", {{"error", error->message}}},
                        "a bulk send could not make another connection ({}); it sends on the "
                        "others",
                        error->message);
            }
            bulk_lane_refused = true;
            continue;
          }
          ++next;
          if (error && !flights[k].sent) {
            finish(flights[k], std::move(error));
          } else {
            lanes[*l].flying.push_back(k); // lost, if sending broke the connection: read below
            for (auto key : keys[k]) ++lanes[*l].keys[key];
          }
          continue;
        }
      }
      // Else the oldest statement in flight is read.
      Lane* lane = nullptr;
      for (auto& candidate : lanes) {
        if (!candidate.flying.empty()
            && (lane == nullptr || candidate.flying.front() < lane->flying.front())) {
          lane = &candidate;
        }
      }
      if (lane == nullptr) break;
      SendPipe& pipe = bulk_senders[static_cast<size_t>(lane - lanes.data())];
      const size_t k = lane->flying.front();
      lane->flying.pop_front();
      auto error = collect(pipe, flights[k]);
      if (!error || !(flights[k].lost || flights[k].rolled_back)) {
        finish(flights[k], std::move(error));
        land(*lane, k);
        continue;
      }
      // To be sent again: the statements still in flight on its connection are read first
      // (lost, when the connection broke), then each is sent again in order before anything
      // new goes on it.
      std::vector<std::pair<size_t, std::optional<Error>>> read{{k, std::move(error)}};
      while (!lane->flying.empty()) {
        const size_t j = lane->flying.front();
        lane->flying.pop_front();
        read.emplace_back(j, collect(pipe, flights[j]));
      }
      for (size_t i = 0; i < read.size(); ++i) {
        auto& [j, e] = read[i];
        // Overtaken by a later statement that committed, or may have (lost), to a group of its.
        bool overtaken = false;
        for (size_t l = i + 1; e && flights[j].rolled_back && l < read.size(); ++l) {
          const SendFlight& after = flights[read[l].first];
          overtaken = overtaken
                      || ((!read[l].second || after.lost) && share_a_group(flights[j], after));
        }
        finish(flights[j], overtaken ? std::move(e) : resend(pipe, flights[j], std::move(e)));
        land(*lane, j);
      }
    }
    if (any) host.notify_waiters();
  }

};

PgSender::PgSender(Host& host, Target target)
  : m_impl(std::make_unique<Impl>(host, std::move(target)))
{
}

PgSender::~PgSender() = default;

std::vector<Expected<SendResult>> PgSender::send(const SendRequest* requests, size_t count)
{
  return m_impl->send_many(requests, count);
}

CommitStats PgSender::commit_stats() const
{
  return CommitStats{m_impl->committed_transactions.load(), m_impl->committed_requests.load()};
}

// The statements commit without waiting for the disk, and one flush of the WAL at the end makes
// them all durable before any is answered: a flush after each would stop the sending for one.
// Each statement's results then stand or fall with its own commit (make_durable of its
// generation, already flushed: whether the server process that made it was still running).
std::vector<Expected<SendResult>> PgSender::send_bulk(const std::vector<SendRequest>& requests)
{
  std::vector<Expected<SendResult>> results(requests.size());
  struct Part {
    size_t start;              // its first request
    size_t end;                // and the one after its last
    std::vector<size_t> where; // its op's items' requests, from start
    std::shared_ptr<SendOp> op;
  };
  std::vector<Part> parts;
  std::vector<SendOp*> ops;
  size_t start = 0;
  while (start < requests.size()) {
    size_t count = 0;
    size_t bytes = 0;
    while (start + count < requests.size() && count < k_bulk_chunk
           && (count == 0 || bytes + requests[start + count].body.size() <= k_bulk_bytes)) {
      bytes += requests[start + count].body.size();
      ++count;
    }
    Part part{start, start + count, {}, nullptr};
    part.op = m_impl->prepare_op(requests.data() + start, count, results.data() + start,
                                 part.where);
    if (!part.op->items.empty()) {
      ops.push_back(part.op.get());
      parts.push_back(std::move(part));
    }
    start += count;
  }
  if (!ops.empty()) m_impl->send_pipelined(ops);
  uint64_t last = 0;
  for (auto& part : parts) {
    Impl::answer_op(*part.op, part.where, results.data() + part.start);
    last = std::max(last, part.op->generation);
  }
  if (last == 0) return results;
  const auto failure = m_impl->make_durable(last);
  for (const auto& part : parts) {
    if (part.op->generation == 0) continue;
    auto error = failure ? failure : m_impl->make_durable(part.op->generation);
    if (!error) continue;
    for (size_t i = part.start; i < part.end; ++i) {
      if (results[i]) results[i] = Unexpected(*error);
    }
  }
  return results;
}

} // namespace acmo

#include "transport/loopback/loopback_transport.h"

#include <cstring>
#include <deque>
#include <vector>

namespace blkmirror::transport {

class LoopbackTransport final : public Transport {
 public:
  LoopbackTransport(LoopbackNetwork& net, std::string name) : net_(net), name_(std::move(name)) {}
  ~LoopbackTransport() override {
    for (auto& [key, t] : net_.listeners_) {
      if (t == this) t = nullptr;
    }
    for (auto& [id, c] : conns_) {
      if (c.peer != nullptr) c.peer->PeerGone(c.peer_conn);
    }
  }

  std::string_view name() const override { return "loopback"; }

  Status Register(io::BufferPool& pool) override {
    pool_ = &pool;
    return Status::Ok();
  }

  Result<Endpoint> Listen(const Endpoint& local) override {
    auto key = local.ToString();
    if (net_.listeners_.count(key) && net_.listeners_[key] != nullptr) {
      return Status::Errno(EADDRINUSE, "loopback listen on " + key);
    }
    net_.listeners_[key] = this;
    return local;
  }

  Result<ConnId> Connect(const Endpoint& peer, std::chrono::milliseconds) override {
    auto it = net_.listeners_.find(peer.ToString());
    if (it == net_.listeners_.end() || it->second == nullptr) {
      return Status::Errno(ECONNREFUSED, "cannot connect to " + peer.ToString() + " (loopback)");
    }
    LoopbackTransport* server = it->second;
    ConnId mine = next_id_++;
    ConnId theirs = server->next_id_++;
    conns_[mine] = Conn{server, theirs, peer.ToString()};
    server->conns_[theirs] = Conn{this, mine, name_};
    server->conns_[theirs].accepted = true;
    server->accepted_.push_back(theirs);
    return mine;
  }

  Status Post(std::span<const WorkItem> items) override {
    for (const WorkItem& item : items) {
      auto it = conns_.find(item.conn);
      if (it == conns_.end() || it->second.closing) {
        return Status::Error(ErrorCode::kClosed, "loopback: connection is closed");
      }
      auto checked = CheckWorkItem(item);
      if (!checked.ok()) return checked.status().Context("loopback");
    }
    for (const WorkItem& item : items) {
      Conn& c = conns_[item.conn];
      Outgoing o;
      o.item = item;
      if (!item.control.empty()) {
        o.control.assign(item.control.begin(), item.control.end());
      }
      c.out.push_back(std::move(o));
    }
    for (const WorkItem& item : items) Deliver(item.conn);
    return Status::Ok();
  }

  size_t SendSpace(ConnId conn) const override {
    auto it = conns_.find(conn);
    return it == conns_.end() || it->second.closing ? 0 : 1024;
  }

  size_t Poll(std::span<Completion> out) override {
    lent_.clear();
    size_t n = 0;
    while (n < out.size() && !accepted_.empty()) {
      Completion& c = out[n++].Reset();
      c.kind = CompletionKind::kAccepted;
      c.conn = accepted_.front();
      accepted_.pop_front();
    }
    for (auto& [id, conn] : conns_) Deliver(id);
    while (n < out.size() && !events_.empty()) {
      Event& e = events_.front();
      Completion& c = out[n++].Reset();
      c.kind = e.kind;
      c.conn = e.conn;
      c.tag = e.tag;
      c.res = e.res;
      c.header = e.header;
      c.status = e.status;
      if (e.data) {
        c.data = std::move(e.data);
      } else if (e.kind == CompletionKind::kRecv) {
        lent_.push_back(std::move(e.control));
        c.control = lent_.back();
      }
      if (e.kind == CompletionKind::kClosed) conns_.erase(e.conn);
      events_.pop_front();
    }
    return n;
  }

  void Release(ConnId, io::BufferRef buffer) override { buffer.Reset(); }
  void Trust(ConnId id) override {
    auto it = conns_.find(id);
    if (it != conns_.end() && it->second.accepted) it->second.trusted = true;
  }

  void Close(ConnId id) override {
    auto it = conns_.find(id);
    if (it == conns_.end() || it->second.closing) return;
    Conn& c = it->second;
    c.closing = true;
    for (auto& o : c.out) {
      if (o.item.signal) Push(Event{CompletionKind::kSent, id, o.item.tag, -ECANCELED});
    }
    c.out.clear();
    if (c.peer != nullptr) c.peer->PeerGone(c.peer_conn);
    c.peer = nullptr;
    Push(Event{CompletionKind::kClosed, id});
  }

  std::string PeerName(ConnId id) const override {
    auto it = conns_.find(id);
    return it == conns_.end() ? "closed" : it->second.peer_name;
  }

 private:
  struct Outgoing {
    WorkItem item;
    std::vector<std::byte> control;
  };
  struct Conn {
    LoopbackTransport* peer = nullptr;
    ConnId peer_conn = kNoConn;
    std::string peer_name;
    bool accepted = false;  // the accepting side (else the connecting side)
    bool trusted = false;   // accepting side, after Trust(): Data frames may arrive
    bool closing = false;
    std::deque<Outgoing> out;
  };
  struct Event {
    CompletionKind kind;
    ConnId conn = kNoConn;
    uint64_t tag = 0;
    int32_t res = 0;
    proto::RawHeader header{};
    io::BufferRef data;
    std::vector<std::byte> control;
    Status status;
  };

  void Push(Event e) { events_.push_back(std::move(e)); }

  // Moves queued frames of `id` into the peer while it has buffers for them.
  void Deliver(ConnId id) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Conn& c = it->second;
    while (!c.out.empty() && c.peer != nullptr) {
      Outgoing& o = c.out.front();
      auto prefix = proto::DecodePrefix(o.item.header);  // checked at Post
      Event e{CompletionKind::kRecv, c.peer_conn};
      e.header = o.item.header;
      if (o.item.data != nullptr) {
        // As on TCP: no buffer for a Data frame the receiver does not take from this peer.
        const Conn& receiver = c.peer->conns_[c.peer_conn];
        if (!(receiver.accepted && receiver.trusted)) {
          LoopbackTransport* peer = c.peer;
          ConnId peer_conn = c.peer_conn;
          bool accepting_side = receiver.accepted;
          Close(id);
          peer->FailConn(peer_conn, UnexpectedData(receiver.peer_name, accepting_side));
          return;
        }
      }
      if (o.item.data != nullptr && prefix->payload_len > c.peer->pool_->buffer_size()) {
        // As on TCP: the receiver cannot hold it, and says so by closing.
        LoopbackTransport* peer = c.peer;
        ConnId peer_conn = c.peer_conn;
        Close(id);
        peer->FailConn(peer_conn, Status::Protocol("Data payload of {} bytes exceeds the buffer "
                                                   "size {}",
                                                   prefix->payload_len,
                                                   peer->pool_->buffer_size()));
        return;
      }
      if (o.item.data != nullptr) {
        auto buf = c.peer->pool_->TryGet();
        if (!buf) return;  // the receiver is full: wait for a Release
        std::memcpy(buf->data(), o.item.data, prefix->payload_len);
        e.data = std::move(*buf);
      } else {
        e.control = std::move(o.control);
      }
      c.peer->Push(std::move(e));
      if (o.item.signal) {
        Push(Event{CompletionKind::kSent, id, o.item.tag,
                   static_cast<int32_t>(proto::kHeaderSize + prefix->payload_len)});
      }
      c.out.pop_front();
    }
  }

  void PeerGone(ConnId id) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    FailConn(id, Status::Error(ErrorCode::kClosed, it->second.peer_name + " closed the connection"));
  }

  void FailConn(ConnId id, Status reason) {
    auto it = conns_.find(id);
    if (it == conns_.end() || it->second.closing) return;
    Conn& c = it->second;
    // Frames already delivered stay readable; the close follows them.
    c.closing = true;
    c.peer = nullptr;
    for (auto& o : c.out) {
      if (o.item.signal) Push(Event{CompletionKind::kSent, id, o.item.tag, -ECANCELED});
    }
    c.out.clear();
    Event e{CompletionKind::kClosed, id};
    e.status = std::move(reason);
    Push(std::move(e));
  }

  LoopbackNetwork& net_;
  std::string name_;
  io::BufferPool* pool_ = nullptr;
  ConnId next_id_ = 1;
  std::map<ConnId, Conn> conns_;
  std::deque<ConnId> accepted_;
  std::deque<Event> events_;
  std::deque<std::vector<std::byte>> lent_;
};

std::unique_ptr<Transport> LoopbackNetwork::CreateTransport(std::string name) {
  return std::make_unique<LoopbackTransport>(*this, std::move(name));
}

}  // namespace blkmirror::transport

// The live stream, /v1/stream: authenticate, subscribe to the watchlist, and hand quote and
// order frames to the page. Reconnects with backoff; resubscribes after each reconnect. Each
// ping's pong carries the gateway's clock: the page learns how far its own clock is off.

const PING_INTERVAL_MS = 20000;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 5000, 10000];

export class Stream {
  /**
   * handlers: onQuote(quote), onOrder(event), onCommand(event), onError(frame),
   * onState("connecting" | "live" | "offline"), onAuthenticated(frame),
   * onClock(offsetMs): the gateway's clock minus this browser's, from a ping's round trip
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.token = null;
    this.symbols = new Set();
    this.socket = null;
    this.attempt = 0;
    this.pingTimer = null;
    this.reconnectTimer = null;
    this.authenticated = false;
    this.pingSentAt = null;
  }

  start(token, symbols) {
    this.stop();
    this.token = token;
    this.symbols = new Set(symbols);
    this.connect();
  }

  stop() {
    this.token = null;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.pingTimer);
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.onclose = null;
      socket.close(1000, "logout");
    }
    this.authenticated = false;
    this.handlers.onState?.("offline");
  }

  subscribe(symbols) {
    symbols.forEach((s) => this.symbols.add(s));
    this.send({ op: "subscribe", quotes: symbols });
  }

  unsubscribe(symbols) {
    symbols.forEach((s) => this.symbols.delete(s));
    this.send({ op: "unsubscribe", quotes: symbols });
  }

  send(op) {
    if (this.socket?.readyState === WebSocket.OPEN && (this.authenticated || op.op === "auth")) {
      this.socket.send(JSON.stringify(op));
    }
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/stream`);
    this.socket = socket;
    this.authenticated = false;
    this.handlers.onState?.("connecting");
    socket.onopen = () => socket.send(JSON.stringify({ op: "auth", token: this.token }));
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = () => this.closed(socket);
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // the server sends JSON only; anything else is noise
    }
    switch (frame.type) {
      case "authenticated":
        this.authenticated = true;
        this.attempt = 0;
        this.handlers.onState?.("live");
        this.handlers.onAuthenticated?.(frame);
        if (this.symbols.size) this.send({ op: "subscribe", quotes: [...this.symbols] });
        clearInterval(this.pingTimer);
        this.ping();
        this.pingTimer = setInterval(() => this.ping(), PING_INTERVAL_MS);
        break;
      case "pong":
        this.pong(frame);
        break;
      case "quote":
        this.handlers.onQuote?.(frame.quote);
        break;
      case "order":
        this.handlers.onOrder?.(frame.event);
        break;
      case "command":
        this.handlers.onCommand?.(frame.event);
        break;
      case "error":
        this.handlers.onError?.(frame);
        break;
      default:
        break; // heartbeat, subscribed
    }
  }

  ping() {
    this.pingSentAt = Date.now();
    this.send({ op: "ping" });
  }

  /** The gateway's clock at the middle of the round trip, against this browser's. */
  pong(frame) {
    const at = Date.parse(frame.at);
    if (this.pingSentAt === null || Number.isNaN(at)) return;
    const now = Date.now();
    this.handlers.onClock?.(at - (this.pingSentAt + now) / 2);
    this.pingSentAt = null;
  }

  closed(socket) {
    if (socket !== this.socket) return;
    clearInterval(this.pingTimer);
    this.authenticated = false;
    this.socket = null;
    if (!this.token) return;
    this.handlers.onState?.("connecting");
    const delay = RECONNECT_DELAYS_MS[Math.min(this.attempt, RECONNECT_DELAYS_MS.length - 1)];
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }
}

// The REST client: bearer token, JSON bodies, Idempotency-Key on commands, and every error
// answer (application/problem+json) turned into an ApiError the page can show.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || "http_error";
    this.title = problem.title || `HTTP ${status}`;
    this.problem = problem;
  }
}

/** A fresh key per command: 32 hex characters from the browser's CSPRNG (works on plain http
 * too, where crypto.randomUUID is not offered). */
export function newIdempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export class Api {
  constructor({ onUnauthorized } = {}) {
    this.token = null;
    // Idempotency keys of the commands this page sent: their answers are already shown.
    this.sentKeys = new Set();
    this.onUnauthorized = onUnauthorized || (() => {});
  }

  async request(method, path, { body, idempotencyKey, auth = true } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && this.token) headers.Authorization = `Bearer ${this.token}`;
    if (idempotencyKey) {
      headers["Idempotency-Key"] = idempotencyKey;
      this.sentKeys.add(idempotencyKey);
    }
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ApiError(0, { code: "network_error", title: "Network error",
                              detail: `the gateway could not be reached (${error.message})` });
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { detail: text.slice(0, 200) };
      }
    }
    if (!response.ok) {
      const problem = data && typeof data === "object" ? data : {};
      const error = new ApiError(response.status, problem);
      if (response.status === 401 && auth) this.onUnauthorized(error);
      throw error;
    }
    return { status: response.status, body: data };
  }

  login(userId) {
    return this.request("POST", "/v1/auth/token", { body: { user_id: userId }, auth: false });
  }

  accounts() {
    return this.request("GET", "/v1/accounts");
  }

  openAccount() {
    return this.request("POST", "/v1/accounts", { body: {} });
  }

  deposit(accountId, amount) {
    return this.request("POST", `/v1/accounts/${encodeURIComponent(accountId)}/deposits`,
                        { body: { amount }, idempotencyKey: newIdempotencyKey() });
  }

  placeOrder(order) {
    return this.request("POST", "/v1/orders", { body: order, idempotencyKey: newIdempotencyKey() });
  }

  orders(accountId) {
    return this.request("GET", `/v1/orders?account_id=${encodeURIComponent(accountId)}&limit=100`);
  }

  /** One order with its events (the detail of a refusal is on its event). */
  order(orderId, accountId) {
    return this.request("GET", `/v1/orders/${encodeURIComponent(orderId)}`
                        + `?account_id=${encodeURIComponent(accountId)}`);
  }

  cancelOrder(orderId, accountId) {
    this.sentKeys.add(`cancel:${orderId}`); // the key the gateway gives a cancel without one
    return this.request("DELETE", `/v1/orders/${encodeURIComponent(orderId)}`
                        + `?account_id=${encodeURIComponent(accountId)}`);
  }

  /** New quantity and/or prices for an open order: `changes` holds only the fields to change
   * (quantity, limit_price, stop_price) as decimal strings. */
  replaceOrder(orderId, accountId, changes) {
    return this.request("PATCH", `/v1/orders/${encodeURIComponent(orderId)}`,
                        { body: { account_id: accountId, ...changes },
                          idempotencyKey: newIdempotencyKey() });
  }

  portfolio(accountId) {
    return this.request("GET", `/v1/portfolio?account_id=${encodeURIComponent(accountId)}`);
  }

  /** The latest quotes of `symbols`, and the quote age limit (`quote_age_ms_max`). */
  quotes(symbols) {
    return this.request("GET", `/v1/quotes?symbols=${symbols.map(encodeURIComponent).join(",")}`);
  }

  candles(symbol, interval, limit) {
    return this.request("GET", `/v1/candles/${encodeURIComponent(symbol)}`
                        + `?interval=${encodeURIComponent(interval)}&limit=${limit}`);
  }

  /** The candle intervals the API offers and its default, as its OpenAPI document says (the
   * `enum` and `default` of GET /v1/candles/{symbol}'s `interval`), or null. */
  async candleIntervals() {
    const { body } = await this.request("GET", "/v1/openapi.json", { auth: false });
    const parameters = body?.paths?.["/v1/candles/{symbol}"]?.get?.parameters ?? [];
    const schema = parameters.find((p) => p.name === "interval" && p.in === "query")?.schema;
    const values = schema?.enum;
    if (!Array.isArray(values) || !values.length) return null;
    return { values, default: values.includes(schema.default) ? schema.default : values[0] };
  }
}

// The page: login, accounts, deposit, watchlist, price chart, order ticket, orders and
// portfolio, kept live by the stream. Money stays in decimal strings from the API to the screen.

import { Api, ApiError } from "./api.js";
import * as chart from "./chart.js";
import * as dec from "./decimal.js";
import { Stream } from "./stream.js";
import * as views from "./views.js";

const OPEN_STATES = new Set(["pending", "validated", "funds_held", "routed", "partially_filled",
                             "pending_cancel"]);
const TERMINAL_STATES = new Set(["filled", "cancelled", "rejected", "expired", "failed"]);
const SYMBOL_RE = /^[A-Z][A-Z0-9.\-]{0,9}$/;
const USER_RE = /^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$/;
const DEFAULT_WATCHLIST = ["AAPL", "MSFT", "TSLA"];
const SESSION_KEY = "brokerage.session";
const WATCHLIST_KEY = "brokerage.watchlist";
// The shard sink lands an event a moment after the stream delivers it: read again a bit later.
const PORTFOLIO_SETTLE_MS = 1500;
const PORTFOLIO_QUOTE_REFRESH_MS = 2000;
// After a 202 the risk answer comes later: over the stream, else found by polling the order.
const AWAIT_POLL_MS = [1000, 2000, 3000, 5000, 8000, 13000];
// Quotes age without a frame: how often the stale marks are looked at again.
const STALE_CHECK_MS = 1000;
// A quote that opened a new candle: the API's candles are read again this much later, so the
// closed candle is the market-data topology's (the stream is conflated).
const CHART_RELOAD_AFTER_ROLL_MS = 2000;
// The chart follows the symbol typed in the ticket once typing pauses this long.
const CHART_FOLLOW_TICKET_MS = 400;
// GET /v1/quotes takes at most this many symbols.
const QUOTE_SYMBOLS_MAX = 100;

const $ = (selector) => document.querySelector(selector);

const state = {
  userId: null,
  token: null,
  expiresAt: null,
  accounts: [],
  accountId: null,
  orders: new Map(),
  quotes: new Map(),
  watchlist: loadWatchlist(),
  portfolio: null,
  // The risk check's quote age limit (GET /v1/quotes' quote_age_ms_max): null until known.
  quoteAgeMsMax: null,
  // The gateway's clock minus this browser's (from the stream's ping and pong).
  clockOffsetMs: 0,
  chart: {
    symbol: null, interval: null, intervals: null,
    candles: [], key: null, token: 0, reloadTimer: null, followTimer: null,
  },
};

const api = new Api({ onUnauthorized: (error) => expire(error) });
const stream = new Stream({
  onState: (linkState) => {
    const badge = $("#link-state");
    badge.dataset.state = linkState;
    badge.textContent = linkState;
  },
  onQuote: receiveQuote,
  onClock: (offsetMs) => { state.clockOffsetMs = offsetMs; },
  onOrder: receiveOrderEvent,
  onCommand: receiveCommandEvent,
  onError: (frame) => {
    if (frame.code === "token_expired" || frame.code === "invalid_token") {
      expire(new ApiError(401, { code: frame.code, detail: frame.detail }));
    } else {
      say("error", "Stream", frame.detail, frame.code);
    }
  },
});
let expiryTimer = null;
// Orders this page placed that were answered 202 (the risk check still to come), by order id:
// { notice, timer }. Their later answer clears the "waiting" notice and says how it went.
const awaiting = new Map();

// ---- notices -----------------------------------------------------------------------------

function say(kind, title, detail, code, codeLine) {
  return views.notice($("#notices"), kind, title, detail, code, codeLine);
}

function showProblem(error, what) {
  if (error instanceof ApiError) {
    const refused = error.status >= 400 && error.status < 500;
    const reason = error.problem.reason && error.problem.reason !== error.code
      ? ` · ${error.problem.reason}` : "";
    const status = error.status ? `${error.status} ` : "";
    say("error", `${what} ${refused ? "refused" : "failed"}`, error.message,
        error.code, `${status}${error.code}${reason}`);
  } else {
    say("error", what, String(error?.message ?? error));
    console.error(error); // a bug in the page, not an API answer
  }
}

// ---- session -----------------------------------------------------------------------------

function saveSession() {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({
    userId: state.userId, token: state.token, expiresAt: state.expiresAt,
    accountId: state.accountId,
  }));
}

function loadWatchlist() {
  try {
    const saved = JSON.parse(localStorage.getItem(WATCHLIST_KEY) ?? "null");
    if (Array.isArray(saved) && saved.every((s) => SYMBOL_RE.test(s))) return saved;
  } catch {
    // a damaged entry: start over
  }
  return [...DEFAULT_WATCHLIST];
}

function saveWatchlist() {
  localStorage.setItem(WATCHLIST_KEY, JSON.stringify(state.watchlist));
}

async function login(userId) {
  const { body } = await api.login(userId);
  state.userId = userId;
  state.token = body.token;
  state.expiresAt = body.expires_at;
  api.token = body.token;
  saveSession();
  await enterApp();
}

function logout(message) {
  clearTimeout(expiryTimer);
  stream.stop();
  Object.assign(state, { userId: null, token: null, expiresAt: null, accounts: [],
                         accountId: null, portfolio: null });
  state.orders.clear();
  forgetAwaited();
  forgetChart();
  api.token = null;
  sessionStorage.removeItem(SESSION_KEY);
  $("#session").hidden = true;
  $("#app-view").hidden = true;
  $("#login-view").hidden = false;
  if (message) say("error", "Signed out", message);
  $("#login-user").focus();
}

function expire(error) {
  if (state.token) logout(`${error.message} — log in again.`);
}

async function enterApp() {
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#session").hidden = false;
  $("#user-name").textContent = state.userId;
  clearTimeout(expiryTimer);
  const remainingMs = new Date(state.expiresAt).getTime() - Date.now();
  expiryTimer = setTimeout(() => logout("Your session expired."), Math.max(remainingMs, 0));
  state.chart.symbol = SYMBOL_RE.test(ticketValues().symbol) ? ticketValues().symbol : null;
  renderWatchlist();
  stream.start(state.token, wantedSymbols());
  await Promise.all([loadQuotes(), startChart(), loadAccounts()]);
}

// ---- accounts ----------------------------------------------------------------------------

async function loadAccounts(preferred) {
  const { body } = await api.accounts();
  state.accounts = body.accounts;
  const ids = state.accounts.map((a) => a.account_id);
  const wanted = preferred ?? state.accountId;
  const chosen = ids.includes(wanted) ? wanted : ids[0] ?? null;
  views.renderAccounts($("#account-select"), state.accounts, chosen);
  $("#no-account").hidden = ids.length > 0;
  for (const id of ["#ticket-card", "#portfolio-card", "#orders-card"]) {
    $(id).hidden = ids.length === 0;
  }
  $("#account-select").disabled = ids.length === 0;
  await selectAccount(chosen);
}

async function selectAccount(accountId) {
  state.accountId = accountId;
  state.orders.clear();
  forgetAwaited();
  state.portfolio = null;
  saveSession();
  renderOrders();
  views.renderPortfolio($("#portfolio-card"), null);
  if (!accountId) return;
  await Promise.all([refreshOrders(), refreshPortfolio()]);
}

async function openAccount() {
  const { body } = await api.openAccount();
  say("info", "Account opened", body.account_id);
  await loadAccounts(body.account_id);
}

// ---- orders ------------------------------------------------------------------------------

function rank(order) {
  return Number.isInteger(order.seq) ? order.seq : null;
}

/** Keep the newest view of each order: a higher seq wins; without seqs to compare, a final
 * state is never replaced by an open one (answers and stream events race). */
function mergeOrder(incoming) {
  if (incoming.account_id !== state.accountId) return false;
  const current = state.orders.get(incoming.order_id);
  if (current) {
    const [mine, theirs] = [rank(current), rank(incoming)];
    if (mine !== null && theirs !== null && theirs < mine) return false;
    if ((mine === null || theirs === null) && TERMINAL_STATES.has(current.state)
        && !TERMINAL_STATES.has(incoming.state)) return false;
  }
  state.orders.set(incoming.order_id, { ...current, ...incoming, cancelling: false });
  return true;
}

async function refreshOrders() {
  const accountId = state.accountId;
  try {
    const { body } = await api.orders(accountId);
    if (accountId !== state.accountId) return;
    body.orders.forEach(mergeOrder);
    renderOrders();
  } catch (error) {
    showProblem(error, "Orders");
  }
}

function renderOrders() {
  views.renderOrders($("#open-orders-body"), $("#done-orders-body"), $("#open-orders-empty"),
                     [...state.orders.values()], (s) => OPEN_STATES.has(s),
                     { onCancel: cancelOrder, onModify: toggleModify, onModifySubmit: modifyOrder });
}

function orderFromEvent(event) {
  return {
    order_id: event.order_id, account_id: event.account_id, symbol: event.symbol,
    side: event.side, order_type: event.order_type, quantity: event.quantity,
    time_in_force: event.time_in_force, state: event.state, seq: event.seq,
    filled_quantity: event.filled_quantity, limit_price: event.limit_price,
    stop_price: event.stop_price, average_fill_price: event.average_fill_price,
    reason: event.reason, detail: event.detail, updated_at: event.occurred_at,
  };
}

function describeOrder(order) {
  return `${order.side} ${dec.quantity(order.quantity)} ${order.symbol}`;
}

/** Why an order was refused, for a person: the detail when there is one, else the reason. */
function refusal(order) {
  const reason = order.reason ? order.reason.replaceAll("_", " ") : "";
  if (order.detail && reason) return `${reason}: ${order.detail}`;
  return order.detail || reason || "no reason given";
}

// ---- orders answered 202 -----------------------------------------------------------------

function awaitOrder(orderId, notice) {
  const waiting = { notice, timer: null, polls: 0 };
  awaiting.set(orderId, waiting);
  const poll = async () => {
    if (awaiting.get(orderId) !== waiting) return;
    waiting.polls += 1;
    try {
      const { body } = await api.order(orderId, state.accountId);
      if (awaiting.get(orderId) !== waiting) return;
      // The detail of the event that brought the order to its state (the row has the reason).
      const last = [...(body.events ?? [])].reverse().find((e) => e.state === body.state);
      const order = { ...body, detail: last?.detail ?? body.detail };
      if (mergeOrder(order)) renderOrders();
      if (settleAwaited(state.orders.get(orderId) ?? order)) return;
    } catch (error) {
      if (!(error instanceof ApiError)) console.error(error);
      // 404: not landed in the shard yet; anything else: the stream may still tell
    }
    if (awaiting.get(orderId) !== waiting) return;
    if (waiting.polls < AWAIT_POLL_MS.length) {
      waiting.timer = setTimeout(poll, AWAIT_POLL_MS[waiting.polls]);
    } else {
      awaiting.delete(orderId);
      waiting.notice?.remove();
      say("info", "Order sent", "no answer from the risk check yet; it will appear below");
    }
  };
  waiting.timer = setTimeout(poll, AWAIT_POLL_MS[0]);
}

/** The risk answer to an order answered 202 has come (`order` is past `pending`): clear the
 * waiting notice and say how it went, a refusal with its reason and detail. True when the
 * order was awaited (its answer is shown here, not again by the caller). */
function settleAwaited(order) {
  const waiting = awaiting.get(order.order_id);
  if (!waiting || !order.state || order.state === "pending") return false;
  awaiting.delete(order.order_id);
  clearTimeout(waiting.timer);
  waiting.notice?.remove();
  if (order.state === "rejected" || order.state === "failed") {
    const reason = order.reason ? ` · ${order.reason}` : "";
    say("error", `Order ${order.state}`, `${describeOrder(order)}: ${refusal(order)}`,
        order.reason ?? `order_${order.state}`, `order_${order.state}${reason}`);
  } else if (order.state !== "filled" && order.state !== "partially_filled") {
    say("info", "Order accepted", `${describeOrder(order)}: ${order.state.replace("_", " ")}`);
  } // a fill says so itself
  return true;
}

function forgetAwaited() {
  for (const waiting of awaiting.values()) {
    clearTimeout(waiting.timer);
    waiting.notice?.remove();
  }
  awaiting.clear();
}

function receiveOrderEvent(event) {
  if (event.account_id !== state.accountId) return;
  if (mergeOrder(orderFromEvent(event))) renderOrders();
  const settled = settleAwaited(state.orders.get(event.order_id) ?? orderFromEvent(event));
  const what = describeOrder(event);
  if (event.state === "filled" || event.state === "partially_filled") {
    const price = event.last_fill_price ?? event.average_fill_price;
    say("info", event.state === "filled" ? "Order filled" : "Partial fill",
        `${what}: ${dec.quantity(event.last_fill_quantity ?? event.filled_quantity)} at ${dec.price(price)}`);
  } else if (settled) {
    // the later answer to this page's own order (a 202): shown by settleAwaited
  } else if (event.state === "rejected" && api.sentKeys.has(event.idempotency_key)) {
    // the answer to this page's own request: shown already
  } else if (event.state === "rejected" || event.state === "failed") {
    say("error", `Order ${event.state}`, `${what}: ${refusal(event)}`, event.reason ?? "");
  } else if (event.state === "cancelled" || event.state === "expired") {
    say("info", `Order ${event.state}`, what);
  }
  schedulePortfolio();
}

function receiveCommandEvent(event) {
  if (event.account_id !== state.accountId) return;
  // A command this page sent has had its answer shown already; one from elsewhere has not.
  if (event.type === "command_rejected" && !api.sentKeys.has(event.idempotency_key)) {
    say("error", `${event.command_type} rejected`, event.detail ?? event.reason, event.reason);
  }
  schedulePortfolio();
}

async function cancelOrder(order) {
  const current = state.orders.get(order.order_id);
  if (current) current.cancelling = true;
  renderOrders();
  try {
    const { status, body } = await api.cancelOrder(order.order_id, order.account_id);
    if (status === 202) {
      say("info", "Cancel requested", "waiting for the market to confirm");
    } else if (mergeOrder(body)) {
      renderOrders();
    }
  } catch (error) {
    if (current) current.cancelling = false;
    renderOrders();
    showProblem(error, "Cancel");
  }
}

function toggleModify(order) {
  const current = state.orders.get(order.order_id);
  if (!current) return;
  current.modifying = !current.modifying;
  renderOrders();
}

/** Local view flags of an order (the map's entry is replaced whenever an event arrives). */
function markOrder(orderId, flags) {
  const current = state.orders.get(orderId);
  if (current) Object.assign(current, flags);
}

async function modifyOrder(order, changes) {
  if (Object.keys(changes).length === 0) {
    say("error", "Modify", "give a new quantity or price");
    return;
  }
  markOrder(order.order_id, { replacing: true });
  renderOrders();
  try {
    const { status, body } = await api.replaceOrder(order.order_id, order.account_id, changes);
    markOrder(order.order_id, { replacing: false, modifying: false, draft: {} });
    if (status !== 202) mergeOrder(body);
    const asked = body.pending_replace;
    if (status === 202 || (asked && asked.state !== "replaced")) {
      const terms = asked ? [`quantity ${dec.quantity(asked.quantity)}`,
        asked.limit_price == null ? null : `limit ${dec.price(asked.limit_price)}`,
        asked.stop_price == null ? null : `stop ${dec.price(asked.stop_price)}`]
        .filter(Boolean).join(", ") : "";
      say("info", "Change requested",
          `${terms ? `${terms}: ` : ""}waiting for the market to confirm`);
    }
  } catch (error) {
    markOrder(order.order_id, { replacing: false });
    showProblem(error, "Modify");
  }
  renderOrders();
}

// ---- order ticket ------------------------------------------------------------------------

function ticketValues() {
  const form = $("#order-form");
  return {
    side: form.querySelector("input[name=side]:checked").value,
    symbol: $("#order-symbol").value.trim().toUpperCase(),
    orderType: $("#order-type").value,
    quantity: $("#order-quantity").value.trim(),
    limitPrice: $("#order-limit").value.trim(),
    stopPrice: $("#order-stop").value.trim(),
    timeInForce: $("#order-tif").value,
  };
}

function needsLimit(orderType) {
  return orderType === "limit" || orderType === "stop_limit";
}

function needsStop(orderType) {
  return orderType === "stop" || orderType === "stop_limit";
}

function updateTicket() {
  const values = ticketValues();
  $("#order-form label[data-for=limit]").hidden = !needsLimit(values.orderType);
  $("#order-form label[data-for=stop]").hidden = !needsStop(values.orderType);
  const submit = $("#order-submit");
  submit.textContent = `${values.side === "sell" ? "Sell" : "Buy"} ${values.symbol || ""}`.trim();
  submit.style.background = submit.style.borderColor =
    values.side === "sell" ? "var(--sell)" : "var(--buy)";
  $("#order-estimate").textContent = estimate(values);
  views.renderTicketQuote($("#ticket-quote"), values.symbol, state.quotes.get(values.symbol),
                          staleAge(values.symbol), state.quoteAgeMsMax);
  views.renderWarnings($("#order-warning"), ticketWarnings(values));
}

/** The price the ticket's order is estimated at: its limit (limit, stop limit), its stop
 * (stop), else the quote's ask for a buy and bid for a sell (market); null without one. */
function ticketPrice(values) {
  const quote = state.quotes.get(values.symbol);
  const price = needsLimit(values.orderType) ? values.limitPrice
    : needsStop(values.orderType) ? values.stopPrice
      : quote ? (values.side === "sell" ? quote.bid : quote.ask) : "";
  return dec.isDecimal(price) ? price : null;
}

function estimate(values) {
  if (!dec.isPlainPositive(values.quantity)) return "";
  const price = ticketPrice(values);
  if (!price) return "";
  const notional = dec.multiply(values.quantity, price);
  const label = values.side === "sell" ? "Estimated proceeds" : "Estimated cost";
  return `${label} ≈ $${dec.money(notional)}`;
}

/** What the ticket warns of before the order is sent, as [kind, text] pairs: a buy whose
 * estimated cost is past buying power, a sell of more shares than the account has free, a
 * market or stop order on a stale quote. Warnings only: the order may still be sent, and the
 * risk check decides. */
function ticketWarnings(values) {
  const warnings = [];
  const portfolio = state.portfolio;
  const { quantity, symbol } = values;
  if (portfolio && dec.isPlainPositive(quantity)) {
    if (values.side === "buy") {
      const price = ticketPrice(values);
      const cost = price && dec.multiply(quantity, price);
      if (cost && dec.compare(cost, portfolio.buying_power) > 0) {
        warnings.push(["buying_power", `Estimated cost $${dec.money(cost)} is more than the `
          + `buying power of $${dec.money(portfolio.buying_power)}: the order will likely be `
          + "refused (insufficient buying power)."]);
      }
    } else {
      const position = portfolio.positions.find((p) => p.symbol === symbol);
      const free = position ? dec.subtract(position.quantity, position.quantity_held ?? "0") : "0";
      if (dec.compare(quantity, free) > 0) {
        const reserved = position && dec.sign(position.quantity_held ?? "0") > 0
          ? ` (${dec.quantity(position.quantity_held)} reserved for open sells)` : "";
        warnings.push(["shares", `Selling ${dec.quantity(quantity)} ${symbol}: the account has `
          + `${dec.quantity(free)} ${symbol} to sell${reserved}; the order will likely be `
          + "refused (insufficient shares)."]);
      }
    }
  }
  if (staleAge(symbol) !== null && (values.orderType === "market" || values.orderType === "stop")) {
    warnings.push(["stale_quote", `The ${symbol} quote is older than `
      + `${views.describeAge(state.quoteAgeMsMax)}: a ${values.orderType} order priced at it is `
      + "refused (stale reference price) until a fresh quote comes."]);
  }
  return warnings;
}

/** The request body, or a message saying what is missing. */
function orderBody(values) {
  if (!SYMBOL_RE.test(values.symbol)) return { problem: "Symbol: an upper-case ticker, e.g. AAPL" };
  if (!dec.isPlainPositive(values.quantity)) return { problem: "Quantity: a positive number" };
  const body = {
    account_id: state.accountId, symbol: values.symbol, side: values.side,
    order_type: values.orderType, quantity: values.quantity, time_in_force: values.timeInForce,
  };
  if (needsLimit(values.orderType)) {
    if (!dec.isPlainPositive(values.limitPrice)) return { problem: "Limit price: a positive price" };
    body.limit_price = values.limitPrice;
  }
  if (needsStop(values.orderType)) {
    if (!dec.isPlainPositive(values.stopPrice)) return { problem: "Stop price: a positive price" };
    body.stop_price = values.stopPrice;
  }
  return { body };
}

async function submitOrder() {
  const { body, problem } = orderBody(ticketValues());
  if (problem) {
    say("error", "Order not sent", problem, "client_validation");
    return;
  }
  const submit = $("#order-submit");
  submit.disabled = true;
  try {
    const { status, body: answer } = await api.placeOrder(body);
    if (status === 202) {
      const notice = say("info", "Order sent", "waiting for the risk check; it will appear below");
      // The stream may have told the answer before this 202 came back.
      const known = state.orders.get(answer.order_id);
      if (!known) {
        mergeOrder({ ...body, order_id: answer.order_id, state: "pending",
                     updated_at: new Date().toISOString() });
      }
      awaitOrder(answer.order_id, notice);
      if (known) settleAwaited(known);
    } else if (mergeOrder(answer)) { // else the stream has already told a later state
      say("info", "Order accepted",
          `${answer.side} ${dec.quantity(answer.quantity)} ${answer.symbol}: ${answer.state.replace("_", " ")}`);
    }
    renderOrders();
    schedulePortfolio();
  } catch (error) {
    showProblem(error, "Order");
  } finally {
    submit.disabled = false;
  }
}

// ---- deposits ----------------------------------------------------------------------------

async function submitDeposit() {
  const amount = $("#deposit-amount").value.trim();
  if (!dec.isPlainPositive(amount)) {
    say("error", "Deposit not sent", "Amount: a positive amount, e.g. 1000.00", "client_validation");
    return;
  }
  const button = $("#deposit-submit");
  button.disabled = true;
  try {
    const { status, body } = await api.deposit(state.accountId, amount);
    say("info", status === 202 ? "Deposit pending" : "Deposit booked", `$${dec.money(body.amount)}`);
    $("#deposit-amount").value = "";
    schedulePortfolio();
  } catch (error) {
    showProblem(error, "Deposit");
  } finally {
    button.disabled = false;
  }
}

// ---- portfolio ---------------------------------------------------------------------------

let portfolioTimer = null;
let portfolioSettleTimer = null;
let lastQuoteRefresh = 0;

async function refreshPortfolio() {
  const accountId = state.accountId;
  if (!accountId) return;
  try {
    const { body } = await api.portfolio(accountId);
    if (accountId !== state.accountId) return;
    state.portfolio = body;
    views.renderPortfolio($("#portfolio-card"), body);
    updateTicket(); // its warnings weigh the order against buying power and shares held
  } catch (error) {
    showProblem(error, "Portfolio");
  }
}

function schedulePortfolio() {
  clearTimeout(portfolioTimer);
  clearTimeout(portfolioSettleTimer);
  portfolioTimer = setTimeout(refreshPortfolio, 100);
  portfolioSettleTimer = setTimeout(refreshPortfolio, PORTFOLIO_SETTLE_MS);
}

// ---- watchlist ---------------------------------------------------------------------------

function renderWatchlist() {
  const tbody = $("#watchlist-body");
  views.renderWatchlist(tbody, state.watchlist, state.quotes, {
    onPick: pickSymbol,
    onRemove: (symbol) => {
      state.watchlist = state.watchlist.filter((s) => s !== symbol);
      saveWatchlist();
      syncSubscriptions();
      renderWatchlist();
    },
  });
  views.markStaleRows(tbody, staleAge, state.quoteAgeMsMax);
  views.markSelectedRow(tbody, state.chart.symbol);
}

/** The symbols the stream should send quotes of: the watchlist's and the chart's. */
function wantedSymbols() {
  return [...new Set([...state.watchlist, state.chart.symbol].filter(Boolean))];
}

function syncSubscriptions() {
  const wanted = new Set(wantedSymbols());
  const added = [...wanted].filter((symbol) => !stream.symbols.has(symbol));
  const dropped = [...stream.symbols].filter((symbol) => !wanted.has(symbol));
  if (added.length) stream.subscribe(added);
  if (dropped.length) stream.unsubscribe(dropped);
}

/** The latest quotes (the stream sends them too, on subscribing) and the quote age limit. */
async function loadQuotes() {
  const symbols = wantedSymbols().slice(0, QUOTE_SYMBOLS_MAX);
  if (!symbols.length) return;
  try {
    const { body } = await api.quotes(symbols);
    state.quoteAgeMsMax = Number.isInteger(body.quote_age_ms_max) ? body.quote_age_ms_max : null;
    body.quotes.forEach(receiveQuote);
    refreshStaleness();
  } catch (error) {
    showProblem(error, "Quotes");
  }
}

/** How old a quote is by the gateway's clock (the browser's, corrected by the stream). */
function quoteAgeMs(quote) {
  return Date.now() + state.clockOffsetMs - Date.parse(quote.venue_time);
}

/** The age in ms of the symbol's quote when it is past the quote age limit, else null. */
function staleAge(symbol) {
  const quote = state.quotes.get(symbol);
  if (!quote || state.quoteAgeMsMax === null) return null;
  const age = quoteAgeMs(quote);
  return age > state.quoteAgeMsMax ? age : null;
}

function refreshStaleness() {
  if (!state.token) return;
  views.markStaleRows($("#watchlist-body"), staleAge, state.quoteAgeMsMax);
  updateTicket();
}

function pickSymbol(symbol) {
  $("#order-symbol").value = symbol;
  const quote = state.quotes.get(symbol);
  if (quote && needsLimit($("#order-type").value)) {
    const side = ticketValues().side;
    $("#order-limit").value = side === "sell" ? quote.bid : quote.ask;
  }
  updateTicket();
  selectChartSymbol(symbol);
  $("#order-quantity").focus();
}

function receiveQuote(quote) {
  const previous = state.quotes.get(quote.symbol);
  if (previous && Date.parse(quote.venue_time) < Date.parse(previous.venue_time)) return;
  state.quotes.set(quote.symbol, quote);
  views.updateQuoteRow($("#watchlist-body"), quote, previous);
  views.markStaleRows($("#watchlist-body"), staleAge, state.quoteAgeMsMax);
  if (quote.symbol === ticketValues().symbol) updateTicket();
  if (quote.symbol === state.chart.symbol) foldIntoChart(quote);
  const held = state.portfolio?.positions.some((p) => p.symbol === quote.symbol);
  if (held && Date.now() - lastQuoteRefresh > PORTFOLIO_QUOTE_REFRESH_MS) {
    lastQuoteRefresh = Date.now();
    refreshPortfolio();
  }
}

function addToWatchlist(text) {
  const symbol = text.trim().toUpperCase();
  if (!SYMBOL_RE.test(symbol)) {
    say("error", "Not a symbol", `${symbol || "(empty)"}: use an upper-case ticker, e.g. AAPL`,
        "invalid_symbol");
    return;
  }
  if (!state.watchlist.includes(symbol)) {
    state.watchlist.push(symbol);
    saveWatchlist();
    syncSubscriptions();
    renderWatchlist();
  }
}

// ---- chart -------------------------------------------------------------------------------

/** The intervals the API offers (from its OpenAPI document) in the picker, then the chart. */
async function startChart() {
  const c = state.chart;
  if (!c.intervals) {
    try {
      c.intervals = await api.candleIntervals();
    } catch (error) {
      if (!(error instanceof ApiError)) console.error(error);
    }
    // Without the document: the API's default interval only.
    c.intervals = c.intervals ?? { values: ["1m"], default: "1m" };
    c.interval = c.intervals.default;
    views.renderIntervals($("#chart-interval"), c.intervals.values, c.interval);
  }
  await loadChart();
}

function forgetChart() {
  const c = state.chart;
  clearTimeout(c.reloadTimer);
  clearTimeout(c.followTimer);
  Object.assign(c, { symbol: null, candles: [], key: null, token: c.token + 1 });
}

async function selectChartSymbol(symbol) {
  const c = state.chart;
  clearTimeout(c.followTimer);
  if (!SYMBOL_RE.test(symbol) || symbol === c.symbol) return;
  c.symbol = symbol;
  views.markSelectedRow($("#watchlist-body"), symbol);
  syncSubscriptions();
  await loadChart();
}

/** The ticket's symbol is charted once typing pauses. */
function followTicketSymbol() {
  const c = state.chart;
  clearTimeout(c.followTimer);
  const symbol = ticketValues().symbol;
  if (SYMBOL_RE.test(symbol) && symbol !== c.symbol) {
    c.followTimer = setTimeout(() => selectChartSymbol(symbol), CHART_FOLLOW_TICKET_MS);
  }
}

/** The charted symbol's candles from the API; the candles this page built live past the API's
 * last are kept, and the latest quote is folded in. */
async function loadChart() {
  const c = state.chart;
  const { symbol, interval } = c;
  clearTimeout(c.reloadTimer);
  $("#chart-symbol").textContent = symbol ?? "";
  if (!symbol || !interval) return;
  const key = `${symbol} ${interval}`;
  const token = ++c.token;
  if (c.key !== key) $("#chart-status").textContent = `Loading ${symbol} ${interval} candles…`;
  try {
    const { body } = await api.candles(symbol, interval, chart.CANDLES_SHOWN);
    if (token !== c.token) return;
    const live = c.key === key ? c.candles.filter((candle) => candle.live) : [];
    c.candles = chart.mergeCandles(body.candles, live);
    c.key = key;
    const quote = state.quotes.get(symbol);
    const folded = quote && chart.foldQuote(c.candles, quote, interval);
    if (folded) c.candles = folded.candles;
    drawChart();
  } catch (error) {
    if (token !== c.token) return;
    if (!(error instanceof ApiError)) console.error(error);
    $("#chart-status").textContent = `Candles unavailable: ${error.message}`;
  }
}

function foldIntoChart(quote) {
  const c = state.chart;
  if (c.key !== `${quote.symbol} ${c.interval}`) return; // still loading: folded once loaded
  const folded = chart.foldQuote(c.candles, quote, c.interval);
  if (!folded) return;
  c.candles = folded.candles;
  drawChart();
  if (folded.opened) {
    clearTimeout(c.reloadTimer);
    c.reloadTimer = setTimeout(loadChart, CHART_RELOAD_AFTER_ROLL_MS);
  }
}

function drawChart() {
  const c = state.chart;
  chart.renderChart($("#chart"), c.candles, { interval: c.interval, symbol: c.symbol });
  const last = c.candles[c.candles.length - 1];
  $("#chart-status").textContent = last
    ? `${c.candles.length} × ${c.interval} candles · last ${dec.price(last.close)} · `
      + `high ${dec.price(last.high)} · low ${dec.price(last.low)}` : "";
}

// ---- wiring ------------------------------------------------------------------------------

function on(selector, event, handler) {
  $(selector).addEventListener(event, (domEvent) => {
    if (event === "submit") domEvent.preventDefault();
    Promise.resolve(handler(domEvent)).catch((error) => showProblem(error, "Error"));
  });
}

function start() {
  on("#login-form", "submit", () => {
    const user = $("#login-user").value.trim();
    if (!USER_RE.test(user)) {
      say("error", "Not a user name", "letters, digits and _ . @ - (up to 64)", "invalid_user");
      return undefined;
    }
    return login(user);
  });
  on("#logout", "click", () => logout());
  on("#new-account", "click", openAccount);
  on("#open-first-account", "click", openAccount);
  on("#account-select", "change", (event) => selectAccount(event.target.value));
  on("#watch-form", "submit", () => {
    addToWatchlist($("#watch-symbol").value);
    $("#watch-symbol").value = "";
  });
  on("#order-form", "submit", submitOrder);
  on("#order-symbol", "input", followTicketSymbol);
  on("#chart-interval", "change", (event) => {
    state.chart.interval = event.target.value;
    return loadChart();
  });
  on("#order-form", "input", updateTicket);
  on("#order-form", "change", updateTicket);
  on("#deposit-form", "submit", submitDeposit);
  updateTicket();
  setInterval(refreshStaleness, STALE_CHECK_MS);

  const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  if (saved?.token && new Date(saved.expiresAt).getTime() > Date.now()) {
    Object.assign(state, saved);
    api.token = saved.token;
    enterApp().catch((error) => showProblem(error, "Session"));
  } else {
    $("#login-user").focus();
  }
  document.body.dataset.ready = "true";
}

start();

// Rendering: plain DOM, text content only (nothing from the API is parsed as HTML).

import * as dec from "./decimal.js";

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function cell(text, className) {
  return el("td", { className }, text);
}

function clock(timestamp) {
  if (!timestamp) return "—";
  const at = new Date(timestamp);
  return Number.isNaN(at.getTime()) ? "—" : at.toLocaleTimeString([], { hour12: false });
}

function shortId(id) {
  return id.length > 14 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id;
}

// ---- accounts --------------------------------------------------------------------------

export function renderAccounts(select, accounts, selected) {
  select.replaceChildren(...accounts.map((account) => el("option", {
    value: account.account_id, selected: account.account_id === selected,
  }, `${account.account_id} · shard ${account.shard}`)));
}

// ---- watchlist -------------------------------------------------------------------------

export function renderWatchlist(tbody, symbols, quotes, { onPick, onRemove }) {
  tbody.replaceChildren(...symbols.map((symbol) => {
    const row = el("tr", { className: "watch-row", dataset: { symbol },
                           title: "Click to trade and chart", onclick: () => onPick(symbol) },
      el("td", { className: "symbol" }, symbol, " ", staleBadge()), cell("—", "num bid"),
      cell("—", "num ask"), cell("—", "num last"), cell("—", "num time"),
      el("td", { className: "num" }, el("button", {
        type: "button", className: "remove", title: `Remove ${symbol}`, "aria-label": `remove ${symbol}`,
        onclick: (event) => { event.stopPropagation(); onRemove(symbol); },
      }, "×")));
    const quote = quotes.get(symbol);
    if (quote) fillQuoteRow(row, quote, null);
    return row;
  }));
}

function fillQuoteRow(row, quote, previous) {
  const set = (name, text, direction) => {
    const target = row.querySelector(`.${name}`);
    target.textContent = text;
    if (direction !== undefined) {
      target.classList.remove("up", "down", "flash");
      if (direction) {
        void target.offsetWidth; // restart the flash animation
        target.classList.add(direction > 0 ? "up" : "down", "flash");
      }
    }
  };
  const move = (field) => (previous ? dec.compare(quote[field] ?? "", previous[field] ?? "") ?? 0
                                    : undefined);
  set("bid", dec.price(quote.bid), move("bid"));
  set("ask", dec.price(quote.ask), move("ask"));
  set("last", quote.last == null ? "—" : dec.price(quote.last), move("last"));
  set("time", clock(quote.venue_time));
}

export function updateQuoteRow(tbody, quote, previous) {
  const row = tbody.querySelector(`tr[data-symbol="${CSS.escape(quote.symbol)}"]`);
  if (row) fillQuoteRow(row, quote, previous);
}

function staleBadge() {
  return el("span", { className: "stale-badge", hidden: true }, "stale");
}

/** "45 s", "3 min", "2 h": how old a quote is. */
export function describeAge(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

function showStale(node, badge, ageMs, limitMs) {
  const stale = ageMs !== null;
  node.classList.toggle("stale", stale);
  badge.hidden = !stale;
  badge.title = stale ? `quote ${describeAge(ageMs)} old; older than ${describeAge(limitMs)}, `
    + "a market or stop order priced at it is refused (stale reference price)" : "";
}

/** Mark the watchlist rows whose quote is past the quote age limit: `ageOf(symbol)` is the
 * quote's age in ms when it is stale, else null. */
export function markStaleRows(tbody, ageOf, limitMs) {
  for (const row of tbody.querySelectorAll("tr.watch-row")) {
    showStale(row, row.querySelector(".stale-badge"), ageOf(row.dataset.symbol), limitMs);
  }
}

/** The charted symbol's row stands out. */
export function markSelectedRow(tbody, symbol) {
  for (const row of tbody.querySelectorAll("tr.watch-row")) {
    row.classList.toggle("selected", row.dataset.symbol === symbol);
  }
}

/** The ticket's line for its symbol's quote: bid, ask and time, and the stale badge. */
export function renderTicketQuote(root, symbol, quote, staleAgeMs, limitMs) {
  const text = root.querySelector("#ticket-quote-text");
  if (!quote) {
    text.textContent = symbol ? `${symbol}: no quote yet` : "";
  } else {
    text.textContent = `${quote.symbol} bid ${dec.price(quote.bid)} · ask ${dec.price(quote.ask)}`
      + ` · ${clock(quote.venue_time)}`;
  }
  showStale(root, root.querySelector("#ticket-stale"), quote ? staleAgeMs : null, limitMs);
}

/** What the ticket warns of before sending: [kind, text] pairs (none: hidden). Rewritten only
 * when they change (the ticket is looked at again every second; a screen reader announces
 * each change once). */
export function renderWarnings(container, warnings) {
  const shown = JSON.stringify(warnings);
  if (container.dataset.shown === shown) return;
  container.dataset.shown = shown;
  container.replaceChildren(...warnings.map(([kind, text]) => el("div", { dataset: { kind } },
                                                                  text)));
  container.hidden = warnings.length === 0;
}

// ---- chart -----------------------------------------------------------------------------

export function renderIntervals(select, intervals, selected) {
  select.replaceChildren(...intervals.map((interval) => el("option", {
    value: interval, selected: interval === selected }, interval)));
}

// ---- orders ----------------------------------------------------------------------------

function sideCell(side) {
  return cell(side, side === "sell" ? "side-sell" : "side-buy");
}

function stateBadge(state) {
  return el("span", { className: `state state-${state}` }, (state || "pending").replace("_", " "));
}

const REFUSED_STATES = new Set(["rejected", "failed", "expired"]);

/** Why a done order was refused, beside its state: the reason, the detail on hover. */
function refusalNote(order) {
  if (!REFUSED_STATES.has(order.state) || !order.reason) return null;
  return el("span", { className: "reason", title: order.detail || order.reason },
            order.reason.replaceAll("_", " "));
}

const MODIFY_FIELDS = [
  ["quantity", "Qty", () => true],
  ["limit_price", "Limit", (type) => type === "limit" || type === "stop_limit"],
  ["stop_price", "Stop", (type) => type === "stop" || type === "stop_limit"],
];

/** The small form under an open order's row: only the fields its type has; what the user
 * typed is kept in `order.draft`, so a re-render (a stream event) does not lose it. */
function modifyRow(order, { onModify, onModifySubmit }) {
  order.draft = order.draft || {};
  const inputs = MODIFY_FIELDS.filter(([, , fits]) => fits(order.order_type)).map(
    ([name, label]) => el("input", {
      name, inputmode: "decimal", value: order.draft[name] ?? "",
      placeholder: `${label} (now ${order[name] ?? "—"})`, "aria-label": `new ${label.toLowerCase()}`,
      oninput: (event) => { order.draft[name] = event.target.value.trim(); },
    }));
  const form = el("form", {
    className: "inline-form modify-form",
    onsubmit: (event) => {
      event.preventDefault();
      const changes = Object.fromEntries(Object.entries(order.draft).filter(([, v]) => v));
      onModifySubmit(order, changes);
    },
  }, ...inputs,
  el("button", { type: "submit", className: "secondary", disabled: order.replacing },
     order.replacing ? "Sending…" : "Send"),
  el("button", { type: "button", className: "remove", "aria-label": "close",
                 onclick: () => onModify(order) }, "×"));
  return el("tr", { className: "modify-row", dataset: { orderId: order.order_id } },
            el("td", { colspan: 10 }, form));
}

export function renderOrders(openBody, doneBody, emptyNote, orders, isOpen,
                             { onCancel, onModify, onModifySubmit }) {
  const newestFirst = [...orders].sort((a, b) =>
    String(b.updated_at ?? "").localeCompare(String(a.updated_at ?? "")));
  const open = newestFirst.filter((order) => isOpen(order.state));
  const done = newestFirst.filter((order) => !isOpen(order.state)).slice(0, 20);
  openBody.replaceChildren(...open.flatMap((order) => [el("tr", {
    dataset: { orderId: order.order_id, state: order.state }, title: order.order_id,
  },
    cell(order.symbol, "symbol"), sideCell(order.side), cell(order.order_type.replace("_", " ")),
    cell(dec.quantity(order.quantity), "num"), cell(dec.quantity(order.filled_quantity ?? "0"), "num"),
    cell(order.limit_price == null ? "—" : dec.price(order.limit_price), "num"),
    cell(order.stop_price == null ? "—" : dec.price(order.stop_price), "num"),
    cell((order.time_in_force || "").toUpperCase()), el("td", {}, stateBadge(order.state)),
    el("td", { className: "num actions" }, el("button", {
      type: "button", className: "modify", disabled: order.state === "pending_cancel" || order.cancelling,
      "aria-label": `modify ${shortId(order.order_id)}`, "aria-expanded": order.modifying ? "true" : "false",
      onclick: () => onModify(order),
    }, "Modify"), el("button", {
      type: "button", className: "cancel", disabled: order.state === "pending_cancel" || order.cancelling,
      "aria-label": `cancel ${shortId(order.order_id)}`,
      onclick: () => onCancel(order),
    }, order.cancelling ? "Cancelling…" : "Cancel"))),
  order.modifying ? modifyRow(order, { onModify, onModifySubmit }) : null].filter(Boolean)));
  emptyNote.hidden = open.length > 0;
  doneBody.replaceChildren(...done.map((order) => el("tr", {
    dataset: { orderId: order.order_id, state: order.state },
    title: order.reason ? `${order.order_id}: ${order.reason}` : order.order_id,
  },
    cell(order.symbol, "symbol"), sideCell(order.side), cell(order.order_type.replace("_", " ")),
    cell(dec.quantity(order.quantity), "num"), cell(dec.quantity(order.filled_quantity ?? "0"), "num"),
    cell(order.average_fill_price == null ? "—" : dec.price(order.average_fill_price), "num"),
    el("td", {}, stateBadge(order.state), refusalNote(order)))));
}

// ---- portfolio -------------------------------------------------------------------------

function signedClass(text) {
  const sign = dec.sign(text);
  return sign > 0 ? "up" : sign < 0 ? "down" : "";
}

export function renderPortfolio(root, portfolio) {
  const put = (id, text, className = "") => {
    const target = root.querySelector(`#${id}`);
    target.textContent = text;
    target.className = className;
  };
  if (!portfolio) {
    for (const id of ["pf-cash", "pf-cash-held", "pf-buying-power", "pf-positions-value",
                      "pf-equity", "pf-pnl"]) put(id, "—");
    root.querySelector("#positions-body").replaceChildren();
    root.querySelector("#pf-as-of").textContent = "";
    return;
  }
  put("pf-cash", `$${dec.money(portfolio.cash)}`);
  put("pf-cash-held", `$${dec.money(portfolio.cash_held)}`);
  put("pf-buying-power", `$${dec.money(portfolio.buying_power)}`);
  put("pf-positions-value", `$${dec.money(portfolio.positions_value)}`);
  put("pf-equity", `$${dec.money(portfolio.equity)}`);
  put("pf-pnl", dec.money(portfolio.unrealized_pnl, { signed: true }),
      signedClass(portfolio.unrealized_pnl));
  root.querySelector("#positions-body").replaceChildren(...portfolio.positions.map((p) => el("tr", {
    dataset: { symbol: p.symbol },
  },
    cell(p.symbol, "symbol"), cell(dec.quantity(p.quantity), "num"),
    cell(dec.price(p.average_cost), "num"),
    cell(p.price == null ? "—" : dec.price(p.price), "num"),
    cell(p.market_value == null ? "—" : dec.money(p.market_value), "num"),
    cell(p.unrealized_pnl == null ? "—" : dec.money(p.unrealized_pnl, { signed: true }),
         `num ${signedClass(p.unrealized_pnl)}`))));
  if (!portfolio.positions.length) {
    root.querySelector("#positions-body").append(el("tr", {}, el("td", {
      colspan: 6, className: "empty" }, "No positions.")));
  }
  const asOf = portfolio.as_of ? `ledger as of ${new Date(portfolio.as_of).toLocaleString()}`
    + (portfolio.ledger_seq == null ? "" : ` (ledger #${portfolio.ledger_seq})`)
    : "no ledger entries yet";
  root.querySelector("#pf-as-of").textContent = asOf;
}

// ---- notices ---------------------------------------------------------------------------

const NOTICE_MS = { info: 6000, error: 15000 };

export function notice(container, kind, title, detail = "", code = "", codeLine = code) {
  const node = el("div", { className: `notice ${kind}`, role: kind === "error" ? "alert" : "status",
                           dataset: { code } },
    el("button", { type: "button", "aria-label": "dismiss", onclick: () => node.remove() }, "×"),
    el("strong", {}, title), detail ? el("div", {}, detail) : null,
    codeLine ? el("div", { className: "code" }, codeLine) : null);
  container.prepend(node);
  while (container.children.length > 5) container.lastElementChild.remove();
  setTimeout(() => node.remove(), NOTICE_MS[kind] ?? NOTICE_MS.info);
  return node;
}

// The price chart: candles from GET /v1/candles/{symbol} drawn as inline SVG (no library), kept
// live by the stream's quotes. Prices stay decimal strings; the only floating point is the
// drawing's coordinates (exact BigInt differences scaled to pixels).

import * as dec from "./decimal.js";

const SVG_NS = "http://www.w3.org/2000/svg";
export const WIDTH = 640;
export const HEIGHT = 260;
const PLOT = { left: 8, right: WIDTH - 72, top: 12, bottom: HEIGHT - 24 };
// Candles asked of the API and drawn.
export const CANDLES_SHOWN = 60;
// Price gridlines aimed at (round steps: 1, 2 or 5 times a power of ten).
const GRIDLINES = 5;
const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds of an interval such as "1m", "5m", "1h", "1d"; null if it is not one. */
export function intervalMs(interval) {
  const match = /^(\d+)([smhd])$/.exec(interval ?? "");
  return match ? Number(match[1]) * UNIT_MS[match[2]] : null;
}

/** The price a quote adds to a candle, as the market-data topology folds it: the trade price
 * when the quote carries a trade print (`last` with `last_size`), else the bid/ask midpoint. */
export function quotePrice(quote) {
  if (quote.last != null && quote.last_size != null) return quote.last;
  return dec.mean(quote.bid, quote.ask);
}

/**
 * The candles with `quote` folded in, as a new array (the input is left alone), or null when
 * the quote changes nothing drawn here (a window older than the last candle). Windows are
 * aligned to the epoch in venue time (a day is a UTC day), as the market-data topology's:
 * a quote of the last candle's window moves its close (and high or low); one of a later window
 * opens a candle. `opened` says which.
 */
export function foldQuote(candles, quote, interval) {
  const span = intervalMs(interval);
  const at = Date.parse(quote.venue_time);
  const price = quotePrice(quote);
  if (!span || Number.isNaN(at) || !dec.isDecimal(price)) return null;
  const start = at - (at % span);
  const last = candles[candles.length - 1];
  const lastStart = last ? Date.parse(last.start) : -Infinity;
  if (start < lastStart) return null;
  if (start > lastStart) {
    const candle = {
      start: new Date(start).toISOString(), end: new Date(start + span).toISOString(),
      open: price, high: price, low: price, close: price, live: true,
    };
    return { candles: [...candles, candle].slice(-CANDLES_SHOWN), opened: true };
  }
  const updated = {
    ...last, close: price,
    high: dec.compare(price, last.high) > 0 ? price : last.high,
    low: dec.compare(price, last.low) < 0 ? price : last.low,
  };
  return { candles: [...candles.slice(0, -1), updated], opened: false };
}

/** The API's candles, with the live ones this page built past the API's last kept: a window
 * the API has is the API's (it saw every quote; the stream is conflated). */
export function mergeCandles(fromApi, live) {
  const lastStart = fromApi.length ? Date.parse(fromApi[fromApi.length - 1].start) : -Infinity;
  const newer = live.filter((candle) => Date.parse(candle.start) > lastStart);
  return [...fromApi, ...newer].slice(-CANDLES_SHOWN);
}

function ceilDiv(a, b) {
  return (a + b - 1n) / b;
}

/** Round price gridlines covering every low and high: their scale (decimal places), the
 * bottom and top of the range in units at that scale, and the gridlines as decimal strings. */
export function priceScale(candles) {
  const texts = candles.flatMap((candle) => [candle.low, candle.high]);
  const scale = Math.max(2, ...texts.map((text) => dec.parse(text)?.scale ?? 0));
  const units = texts.map((text) => dec.unitsAt(text, scale));
  let low = units.reduce((a, b) => (b < a ? b : a));
  let high = units.reduce((a, b) => (b > a ? b : a));
  if (low === high) { // a flat range: half a percent either side (one unit at least)
    const spread = low / 200n > 0n ? low / 200n : 1n;
    low = low > spread ? low - spread : 0n;
    high += spread;
  }
  const wanted = ceilDiv(high - low, BigInt(GRIDLINES - 1));
  let step = null;
  for (let power = 1n; step === null; power *= 10n) {
    step = [1n, 2n, 5n].map((m) => m * power).find((candidate) => candidate >= wanted) ?? null;
  }
  const bottom = (low / step) * step;
  const top = ceilDiv(high, step) * step;
  const ticks = [];
  for (let tick = bottom; tick <= top; tick += step) ticks.push(dec.fromUnits(tick, scale));
  return { scale, bottom, top, ticks };
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function timeLabel(iso, interval) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return "";
  if ((intervalMs(interval) ?? 0) >= UNIT_MS.d) {
    return at.toLocaleDateString([], { month: "short", day: "numeric", timeZone: "UTC" });
  }
  return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
}

/** Draw `candles` (oldest first) into the <svg> element: candlesticks, price gridlines with
 * their labels on the right, a few times below, and the last close marked. */
export function renderChart(root, candles, { interval, symbol }) {
  root.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const shown = candles.slice(-CANDLES_SHOWN);
  if (!shown.length) {
    root.replaceChildren(svg("text", {
      class: "chart-empty", x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle",
    }, `No ${interval} candles for ${symbol} yet`));
    return;
  }
  const { scale, bottom, top, ticks } = priceScale(shown);
  const height = PLOT.bottom - PLOT.top;
  const range = Number(top - bottom);
  const y = (text) => PLOT.top + (Number(top - dec.unitsAt(text, scale)) / range) * height;
  const px = (value) => Math.round(value * 10) / 10;
  const slot = (PLOT.right - PLOT.left) / Math.max(shown.length, 20);
  const x = (index) => PLOT.right - slot * (shown.length - index - 0.5);
  const bodyWidth = Math.max(1, slot * 0.6);

  const grid = ticks.map((tick) => svg("g", { class: "gridline", dataset: { price: tick } },
    svg("line", { x1: PLOT.left, x2: PLOT.right, y1: px(y(tick)), y2: px(y(tick)) }),
    svg("text", { class: "price-label", x: PLOT.right + 6, y: px(y(tick)) + 4 },
        dec.price(tick))));

  const every = Math.max(1, Math.ceil(shown.length / 5));
  const times = shown.map((candle, index) => ((shown.length - 1 - index) % every === 0
    ? svg("text", { class: "time-label", x: px(x(index)), y: HEIGHT - 6, "text-anchor": "middle" },
          timeLabel(candle.start, interval))
    : null)).filter(Boolean);

  const sticks = shown.map((candle, index) => {
    const rising = dec.compare(candle.close, candle.open) >= 0;
    const [yOpen, yClose] = [y(candle.open), y(candle.close)];
    return svg("g", {
      class: `candle ${rising ? "up" : "down"}${candle.live ? " live" : ""}`,
      dataset: { start: candle.start, open: candle.open, high: candle.high, low: candle.low,
                 close: candle.close },
    },
    svg("title", {}, `${timeLabel(candle.start, interval)}  O ${dec.price(candle.open)}  `
        + `H ${dec.price(candle.high)}  L ${dec.price(candle.low)}  C ${dec.price(candle.close)}`),
    svg("line", { class: "wick", x1: px(x(index)), x2: px(x(index)),
                  y1: px(y(candle.high)), y2: px(y(candle.low)) }),
    svg("rect", { class: "body", x: px(x(index) - bodyWidth / 2), width: px(bodyWidth),
                  y: px(Math.min(yOpen, yClose)),
                  height: Math.max(1, px(Math.abs(yOpen - yClose))) }));
  });

  const close = shown[shown.length - 1].close;
  const yLast = px(y(close));
  const last = svg("g", { class: "last-price", dataset: { price: close } },
    svg("line", { x1: PLOT.left, x2: PLOT.right, y1: yLast, y2: yLast }),
    svg("rect", { x: PLOT.right + 2, y: yLast - 9, width: WIDTH - PLOT.right - 4, height: 18,
                  rx: 3 }),
    svg("text", { x: PLOT.right + 6, y: yLast + 4 }, dec.price(close)));

  root.replaceChildren(svg("g", { class: "grid" }, ...grid), svg("g", { class: "times" }, ...times),
                       svg("g", { class: "candles" }, ...sticks), last);
}

// Decimal strings, exactly: the API sends money, prices and quantities as strings, and they stay
// strings here. Arithmetic goes through BigInt (an unscaled integer and a scale), never through
// floating point; the only rounding is for display.

const DECIMAL_RE = /^([+-])?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;
// What a user may type in a form: plain digits with an optional fraction, no sign, no exponent.
const INPUT_RE = /^\d+(\.\d+)?$|^\.\d+$/;

/** {units: BigInt, scale: number} with value = units / 10**scale, scale >= 0; null if not a decimal. */
export function parse(text) {
  if (typeof text !== "string") return null;
  const match = DECIMAL_RE.exec(text.trim());
  if (!match || (match[2] === "" && (match[3] ?? "") === "")) return null;
  const [, sign, whole, fraction = "", exponentText = "0"] = match;
  let units = BigInt((whole || "0") + fraction);
  let scale = fraction.length - Number(exponentText);
  if (scale < 0) {
    units *= 10n ** BigInt(-scale);
    scale = 0;
  }
  return { units: sign === "-" ? -units : units, scale };
}

export function isDecimal(text) {
  return parse(text) !== null;
}

/** True for what a person may type as a positive amount, price or quantity. */
export function isPlainPositive(text) {
  return INPUT_RE.test(text) && parse(text).units > 0n;
}

function rescale(value, scale) {
  return value.units * 10n ** BigInt(scale - value.scale);
}

/** -1, 0 or 1; null when either side is not a decimal. */
export function compare(a, b) {
  const x = parse(a);
  const y = parse(b);
  if (!x || !y) return null;
  const scale = Math.max(x.scale, y.scale);
  const left = rescale(x, scale);
  const right = rescale(y, scale);
  return left < right ? -1 : left > right ? 1 : 0;
}

/** The exact product of two decimal strings, as a decimal string; null if either is invalid. */
export function multiply(a, b) {
  const x = parse(a);
  const y = parse(b);
  if (!x || !y) return null;
  return toText(x.units * y.units, x.scale + y.scale);
}

/** The exact sum of two decimal strings, as a decimal string; null if either is invalid. */
export function add(a, b) {
  const x = parse(a);
  const y = parse(b);
  if (!x || !y) return null;
  const scale = Math.max(x.scale, y.scale);
  return toText(rescale(x, scale) + rescale(y, scale), scale);
}

/** The exact difference a - b, as a decimal string; null if either is invalid. */
export function subtract(a, b) {
  const y = parse(b);
  return y ? add(a, toText(-y.units, y.scale)) : null;
}

/** The exact midpoint (a + b) / 2 (one more decimal place when the sum is odd). */
export function mean(a, b) {
  const sum = parse(add(a, b));
  if (!sum) return null;
  return sum.units % 2n === 0n ? toText(sum.units / 2n, sum.scale)
    : toText(sum.units * 5n, sum.scale + 1);
}

/** The decimal string of units / 10**scale (scale >= 0): `parse`'s inverse. */
export function fromUnits(units, scale) {
  return toText(units, scale);
}

/** The units of a decimal string at `scale` places (BigInt, exact when it has no more places
 * than that; otherwise truncated toward zero); null if it is not a decimal. */
export function unitsAt(text, scale) {
  const value = parse(text);
  if (!value) return null;
  return value.scale <= scale ? rescale(value, scale)
    : value.units / 10n ** BigInt(value.scale - scale);
}

function toText(units, scale) {
  const negative = units < 0n;
  let digits = (negative ? -units : units).toString();
  if (scale > 0) {
    digits = digits.padStart(scale + 1, "0");
    digits = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  }
  return (negative ? "-" : "") + digits;
}

function group(whole) {
  return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/**
 * For display: rounded half away from zero to `places` (or, with `trim`, to at most `places`
 * with trailing zeros dropped), grouped in thousands. Not a decimal: shown as an em dash.
 */
export function format(text, places = 2, { trim = false, signed = false } = {}) {
  const value = parse(text ?? "");
  if (!value) return "—";
  let units = value.units;
  if (value.scale > places) {
    const divisor = 10n ** BigInt(value.scale - places);
    const half = divisor / 2n;
    const magnitude = units < 0n ? -units : units;
    const rounded = (magnitude + half) / divisor;
    units = units < 0n ? -rounded : rounded;
  } else {
    units *= 10n ** BigInt(places - value.scale);
  }
  let out = toText(units, places);
  if (trim && out.includes(".")) out = out.replace(/\.?0+$/, "");
  const negative = out.startsWith("-");
  const body = negative ? out.slice(1) : out;
  const [whole, fraction] = body.split(".");
  const grouped = group(whole) + (fraction === undefined ? "" : `.${fraction}`);
  const isZero = units === 0n;
  if (negative && !isZero) return `-${grouped}`;
  return signed && !isZero ? `+${grouped}` : grouped;
}

/** Money: two places, grouped. */
export function money(text, options) {
  return format(text, 2, options);
}

/** Quantities: up to six places, trailing zeros dropped. */
export function quantity(text) {
  return format(text, 6, { trim: true });
}

/** Prices: at least two places, up to four (sub-dollar ticks), trailing zeros past two dropped. */
export function price(text) {
  const shown = format(text, 4);
  return shown.replace(/(\.\d\d\d?)0+$/, "$1").replace(/(\.\d\d)0$/, "$1");
}

/** The sign of a decimal string: -1, 0, 1 (0 when it is not a decimal). */
export function sign(text) {
  const value = parse(text ?? "");
  if (!value) return 0;
  return value.units < 0n ? -1 : value.units > 0n ? 1 : 0;
}

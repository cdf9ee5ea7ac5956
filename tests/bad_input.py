"""The bad-input corpus (helpers, no tests here): what every entry point of the system is fed
by `tests/integration/compose/test_bad_input.py`, and how each answer is judged and counted.

Entry points and what a bad input must get:
- HTTP: a 4xx `application/problem+json` answer with a stable `code`, as the published
  OpenAPI document describes it; never a 5xx. Cases are generated from the gateway's own
  OpenAPI document by schemathesis (positive and negative modes, fixed seed) plus hand-made
  ones (huge and deep bodies, NaN / Infinity / 1e400 quantities, 30-decimal prices, forged,
  alg=none and expired tokens, another user's account).
- WebSocket `/v1/stream`: an `error` frame, and the connection stays open (a `ping` after
  the bad frame is answered `pong`).
- `orders.commands` (raw bytes produced straight to the topic): a dead letter in
  `dlq.orders.commands` with its reason, or, for a well-formed command that cannot be carried
  out, a refusal on `orders.events` with its reason. Never a decision that changes the books.
- FIX execution reports from the market maker: refused by the session (Reject) or by the
  gateway (an `unusable_report` / `unknown_order` alert), never booked.
- Connector files: one line naming the file and the field.

Every case has a name; a failure names the case and what came back.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import string
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import jwt

PROBLEM = "application/problem+json"
VICTIM = "victim"  # the user whose account, money and order the corpus must not change
ATTACKER = "attacker"  # another user, signed in properly, with an account of their own
NOBODY = "nobody"  # no Authorization header at all
BODY_BYTES_MAX = 16384  # the gateway's default body limit (HttpConfig.body_bytes_max)


# ---- counting -------------------------------------------------------------------------------


@dataclass
class Tally:
    """Inputs per entry point, how each was answered, and the failures (case and answer)."""

    inputs: Counter[str] = field(default_factory=Counter)
    answers: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, entry: str, case: str, answer: str, failure: str | None = None) -> None:
        self.inputs[entry] += 1
        self.answers.setdefault(entry, Counter())[answer] += 1
        if failure is not None:
            self.failures.append(f"{entry} {case}: {failure}")

    def summary(self) -> dict[str, Any]:
        return {
            "inputs": dict(self.inputs),
            "total": sum(self.inputs.values()),
            "answered": {entry: dict(sorted(counts.items()))
                         for entry, counts in self.answers.items()},
            "failures": len(self.failures),
            "failed_cases": self.failures[:50],
        }


# ---- tokens ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return ".".join((_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()),
                     signature))


def _signed_raw(secret: str, payload: bytes) -> str:
    """An HS256 token over exactly these payload bytes (JSON an encoder would not write)."""
    import hashlib
    import hmac

    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(payload)
    mac = hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + _b64(mac)


def bad_tokens(secret: str, victim: str, now_s: int) -> list[tuple[str, str, str]]:
    """(case, Authorization header value, expected code) for tokens that must be refused 401.
    `secret` is the stack's own demo-login key: some tokens are signed with it and still
    wrong (expired, not yet valid, odd claims)."""
    good = {"sub": victim, "iat": now_s, "exp": now_s + 600}
    right = jwt.encode(good, secret, algorithm="HS256")
    head, body, sig = right.split(".")
    other_body = _b64(json.dumps({**good, "sub": ATTACKER}).encode())
    tokens: list[tuple[str, str]] = [
        ("alg_none", _unsigned({"alg": "none", "typ": "JWT"}, good)),
        ("alg_none_with_signature", _unsigned({"alg": "none"}, good, sig)),
        ("alg_None_case", _unsigned({"alg": "None"}, good)),
        ("forged_wrong_secret", jwt.encode(good, "not-the-secret-" * 3, algorithm="HS256")),
        ("forged_hs512_right_secret", jwt.encode(good, secret, algorithm="HS512")),
        ("payload_swapped", f"{head}.{other_body}.{sig}"),
        ("signature_stripped", f"{head}.{body}."),
        ("signature_truncated", f"{head}.{body}.{sig[:-4]}"),
        ("rs256_header_hmac_body", _unsigned({"alg": "RS256", "typ": "JWT"}, good, sig)),
        ("expired", jwt.encode({**good, "exp": now_s - 60}, secret, algorithm="HS256")),
        ("exp_zero", jwt.encode({**good, "exp": 0}, secret, algorithm="HS256")),
        ("exp_negative", jwt.encode({**good, "exp": -1}, secret, algorithm="HS256")),
        ("not_yet_valid", jwt.encode({**good, "nbf": now_s + 3600}, secret, algorithm="HS256")),
        ("exp_string", jwt.encode({**good, "exp": "never"}, secret, algorithm="HS256")),
        ("exp_bool", jwt.encode({**good, "exp": True}, secret, algorithm="HS256")),
        ("exp_null", jwt.encode({**good, "exp": None}, secret, algorithm="HS256")),
        ("exp_nan", _signed_raw(secret, b'{"sub":"%s","exp":NaN}' % victim.encode())),
        ("exp_infinity",
         _signed_raw(secret, b'{"sub":"%s","exp":Infinity}' % victim.encode())),
        ("exp_1e400", _signed_raw(secret, b'{"sub":"%s","exp":1e400}' % victim.encode())),
        ("exp_10e40", jwt.encode({**good, "exp": 10**40}, secret, algorithm="HS256")),
        ("nbf_nan", _signed_raw(
            secret, b'{"sub":"%s","exp":%d,"nbf":NaN}' % (victim.encode(), now_s + 600))),
        ("no_exp", jwt.encode({"sub": victim}, secret, algorithm="HS256")),
        ("no_sub", jwt.encode({"exp": now_s + 600}, secret, algorithm="HS256")),
        ("sub_int", jwt.encode({**good, "sub": 12345}, secret, algorithm="HS256")),
        ("sub_list", jwt.encode({**good, "sub": [victim]}, secret, algorithm="HS256")),
        ("sub_too_long", jwt.encode({**good, "sub": "a" * 200}, secret, algorithm="HS256")),
        ("sub_bad_chars",
         jwt.encode({**good, "sub": "../victim"}, secret, algorithm="HS256")),
        ("claims_not_object", _signed_raw(secret, b'["sub"]')),
        ("claims_not_json", _signed_raw(secret, b"\xff\xfe not json")),
        ("header_not_json", "bm90IGpzb24." + body + "." + sig),
        ("two_parts", f"{head}.{body}"),
        ("four_parts", f"{head}.{body}.{sig}.{sig}"),
        ("garbage", "not.a.token"),
        ("dots_only", ".."),
        ("long_garbage", "A" * 8000),
        ("latin1_garbage", "t\u00e9st.t\u00e9st.t\u00e9st"),
    ]
    cases = [(name, f"Bearer {token}", "invalid_token") for name, token in tokens]
    expired = {"expired", "exp_zero"}
    cases = [(name, value, "token_expired" if name in expired else code)
             for name, value, code in cases]
    cases += [
        ("scheme_basic", "Basic " + _b64(b"victim:password"), "invalid_token"),
        ("scheme_only", "Bearer", "invalid_token"),
        ("scheme_blank", "Bearer    ", "invalid_token"),
        ("scheme_lowercase_garbage", "bearer x", "invalid_token"),
        ("empty_header", "", "missing_token"),
    ]
    return cases


# ---- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCase:
    """One request. `auth`: VICTIM, ATTACKER or NOBODY (the runner puts in their token), or
    the literal Authorization header value. `body` is sent as is (bytes) or as JSON. A case
    whose `codes` is empty may answer any stable problem code; `ok` lists success statuses
    it may also get (reads, which change nothing)."""

    name: str
    method: str
    path: str  # percent-encoded path and query
    auth: str = VICTIM
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None
    raw: bool = False  # body is bytes to send as they are
    content_type: str | None = "application/json"
    codes: frozenset[str] = frozenset()
    ok: frozenset[int] = frozenset()

    def body_bytes(self) -> bytes | None:
        if self.body is None:
            return None
        if self.raw:
            assert isinstance(self.body, bytes)
            return self.body
        return json.dumps(self.body, allow_nan=True).encode()


@dataclass(frozen=True)
class Target:
    """What the corpus aims at in a running stack."""

    victim_account: str
    victim_order: str  # an open order of the victim's
    attacker_account: str
    secret: str  # the demo login's key (the stack file sets it)
    now_s: int


def _codes(*codes: str) -> frozenset[str]:
    return frozenset(codes)


ORDER = {"symbol": "AAPL", "side": "buy", "order_type": "limit", "quantity": "1",
         "limit_price": "1.00"}
NOT_NUMBERS = ("NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "+inf", "1e400",
               "-1e400", "1E5", "1e-7", "0x10", "1_000", "1,5", " 5", "5 ", "+5", "٥",
               "5\u0000", "")
QUANTITY_CASES = NOT_NUMBERS + ("-5", "-0", "0", "0.0000000", "00", "0.0000001", "1000001",
                                "9" * 40, "9" * 41, "1." + "0" * 38 + "1")
PRICE_CASES = NOT_NUMBERS + ("-1", "0", "209.500000000000000000000000000001",
                             "209.123456789012345678901234567890", "0.00001", "209.501",
                             "1000000.01", "9" * 40)
AMOUNT_CASES = NOT_NUMBERS + ("-100", "0", "0.001", "100.001", "10000000.01", "9" * 40,
                              "1." + "0" * 30 + "1")
WRONG_TYPES: tuple[Any, ...] = (10, 10.5, 1e308, -1, True, None, [], {}, ["1"], {"v": "1"})


def hand_made_http_cases(target: Target) -> list[HttpCase]:
    """Requests built by hand; each must be refused with a 4xx problem (or, for reads, may be
    served), and none may change the victim's money or orders."""
    acc, order = target.victim_account, target.victim_order
    cases: list[HttpCase] = []
    n = 0

    def key() -> tuple[tuple[str, str], ...]:
        nonlocal n
        n += 1
        return (("Idempotency-Key", f"bad-{n}"),)

    def place(name: str, changes: dict[str, Any], *codes: str, drop: Iterable[str] = (),
              auth: str = VICTIM) -> None:
        body = {**ORDER, "account_id": acc, **changes}
        for gone in drop:
            body.pop(gone, None)
        cases.append(HttpCase(f"order:{name}", "POST", "/v1/orders", auth, key(), body,
                              codes=_codes(*codes)))

    # Orders: numbers that are not, or not in range, or not at their scale.
    for text in QUANTITY_CASES:
        place(f"quantity={text!r}", {"quantity": text})
    for text in PRICE_CASES:
        place(f"limit_price={text!r}", {"limit_price": text})
        place(f"stop_price={text!r}", {"order_type": "stop", "stop_price": text},
              drop=["limit_price"])
    for value in WRONG_TYPES:
        for name in ("quantity", "limit_price", "symbol", "side", "order_type", "account_id",
                     "time_in_force"):
            place(f"{name}={json.dumps(value)}", {name: value})
    for name in ("account_id", "symbol", "side", "order_type", "quantity"):
        place(f"missing_{name}", {}, drop=[name])
    place("limit_without_price", {}, "missing_field", drop=["limit_price"])
    place("market_with_limit_price", {"order_type": "market"}, "unexpected_field")
    place("limit_with_stop_price", {"stop_price": "2.00"}, "unexpected_field")
    place("stop_limit_without_stop", {"order_type": "stop_limit"}, "missing_field")
    for symbol in ("", "AAPL\n", "A" * 11, "ÄAPL", "AA PL", "AAPL;DROP", "../etc", "1AB",
                   "AAPL\u0000", "ＡＡＰＬ", "-", "."):
        place(f"symbol={symbol!r}", {"symbol": symbol})
    for side in ("short", "BUY", "", "buy "):
        place(f"side={side!r}", {"side": side})
    place("order_type=iceberg", {"order_type": "iceberg"})
    place("time_in_force=fok", {"time_in_force": "fok"})
    place("unknown_field", {"leverage": "100x"})
    place("proto_field", {"__proto__": {"admin": True}})
    place("another_users_account", {"account_id": target.attacker_account},
          "account_not_found")
    place("victims_account_by_attacker", {}, "account_not_found", auth=ATTACKER)
    place("no_such_account", {"account_id": "acc_no_such_account"}, "account_not_found")
    place("account_id_traversal", {"account_id": "../../accounts"}, "account_not_found")
    place("account_id_too_long", {"account_id": "a" * 65})
    # Bodies that are not an order at all.
    headers = key()
    raw_bodies: list[tuple[str, bytes]] = [
        ("not_json", b'{"symbol": '), ("empty", b""), ("null", b"null"), ("array", b"[]"),
        ("string", b'"order"'), ("number", b"1e400"), ("nan", b"NaN"), ("true", b"true"),
        ("invalid_utf8", b'{"symbol": "\xff\xfe"}'), ("bom", b"\xef\xbb\xbf{}"),
        ("trailing_garbage", json.dumps({**ORDER, "account_id": acc}).encode() + b"}}"),
        ("duplicate_keys", b'{"quantity": "1", "quantity": "NaN", "symbol": "AAPL", '
                           b'"side": "buy", "order_type": "limit", "limit_price": "1.00", '
                           b'"account_id": "' + acc.encode() + b'"}'),
        ("quantity_json_nan", json.dumps({**ORDER, "account_id": acc, "quantity": float("nan")},
                                         allow_nan=True).encode()),
        ("quantity_json_1e400",
         json.dumps({**ORDER, "account_id": acc}).encode().replace(b'"1"', b"1e400", 1)),
        ("deep_arrays", b"[" * 8000 + b"]" * 8000),
        ("deep_objects", b'{"a":' * 2000 + b"{}" + b"}" * 2000),
        ("deep_in_field", b'{"account_id":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("deep_unknown_field", b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("just_over_limit", b'{"symbol":"' + b"A" * BODY_BYTES_MAX + b'"}'),
        ("one_megabyte", b'{"symbol":"' + b"A" * (1 << 20) + b'"}'),
        ("many_keys", ("{" + ",".join(f'"k{i}":1' for i in range(1500)) + "}").encode()),
        ("nul_bytes", b"\x00" * 100),
    ]
    for name, raw in raw_bodies:
        cases.append(HttpCase(f"order_body:{name}", "POST", "/v1/orders", VICTIM, key(), raw,
                              raw=True))
    cases += [
        HttpCase("order:content_type_text", "POST", "/v1/orders", VICTIM, headers,
                 {**ORDER, "account_id": acc}, content_type="text/plain",
                 codes=_codes("unsupported_media_type")),
        HttpCase("order:content_type_form", "POST", "/v1/orders", VICTIM, key(),
                 b"symbol=AAPL&quantity=1", raw=True,
                 content_type="application/x-www-form-urlencoded",
                 codes=_codes("unsupported_media_type")),
        HttpCase("order:no_idempotency_key", "POST", "/v1/orders", VICTIM, (),
                 {**ORDER, "account_id": acc}, codes=_codes("missing_idempotency_key")),
        HttpCase("order:empty_idempotency_key", "POST", "/v1/orders", VICTIM,
                 (("Idempotency-Key", ""),), {**ORDER, "account_id": acc},
                 codes=_codes("invalid_idempotency_key", "missing_idempotency_key")),
        HttpCase("order:long_idempotency_key", "POST", "/v1/orders", VICTIM,
                 (("Idempotency-Key", "k" * 65),), {**ORDER, "account_id": acc},
                 codes=_codes("invalid_idempotency_key")),
        HttpCase("order:spaced_idempotency_key", "POST", "/v1/orders", VICTIM,
                 (("Idempotency-Key", "a b"),), {**ORDER, "account_id": acc},
                 codes=_codes("invalid_idempotency_key")),
        HttpCase("order:latin1_idempotency_key", "POST", "/v1/orders", VICTIM,
                 (("Idempotency-Key", "cl\u00e9"),), {**ORDER, "account_id": acc},
                 codes=_codes("invalid_idempotency_key")),
    ]

    # Money: deposits and withdrawals of amounts that are not.
    for kind in ("deposits", "withdrawals"):
        path = f"/v1/accounts/{acc}/{kind}"
        for text in AMOUNT_CASES:
            cases.append(HttpCase(f"{kind}:amount={text!r}", "POST", path, VICTIM, key(),
                                  {"amount": text}))
        for value in WRONG_TYPES:
            cases.append(HttpCase(f"{kind}:amount={json.dumps(value)}", "POST", path, VICTIM,
                                  key(), {"amount": value}))
        cases += [
            HttpCase(f"{kind}:unknown_field", "POST", path, VICTIM, key(),
                     {"amount": "10.00", "currency": "BTC"}),
            HttpCase(f"{kind}:missing_amount", "POST", path, VICTIM, key(), {}),
            HttpCase(f"{kind}:no_key", "POST", path, VICTIM, (), {"amount": "10.00"},
                     codes=_codes("missing_idempotency_key")),
            HttpCase(f"{kind}:by_attacker", "POST", path, ATTACKER, key(),
                     {"amount": "10.00"}, codes=_codes("account_not_found")),
            HttpCase(f"{kind}:no_token", "POST", path, NOBODY, key(), {"amount": "10.00"},
                     codes=_codes("missing_token")),
            HttpCase(f"{kind}:deep_body", "POST", path, VICTIM, key(),
                     b'{"amount":' + b"[" * 5000 + b"]" * 5000 + b"}", raw=True),
            HttpCase(f"{kind}:huge_body", "POST", path, VICTIM, key(),
                     b'{"amount":"' + b"9" * 100_000 + b'"}', raw=True,
                     codes=_codes("body_too_large")),
        ]
    cases.append(HttpCase("withdrawals:more_than_held", "POST",
                          f"/v1/accounts/{acc}/withdrawals", VICTIM, key(),
                          {"amount": "9999999.99"},
                          codes=_codes("insufficient_withdrawable_cash")))

    # The victim's open order: replaced or cancelled by someone else, or with bad terms.
    patch = f"/v1/orders/{order}"
    for text in QUANTITY_CASES:
        cases.append(HttpCase(f"replace:quantity={text!r}", "PATCH", patch, VICTIM, key(),
                              {"account_id": acc, "quantity": text}))
    for text in PRICE_CASES:
        cases.append(HttpCase(f"replace:limit_price={text!r}", "PATCH", patch, VICTIM, key(),
                              {"account_id": acc, "limit_price": text}))
    cases += [
        HttpCase("replace:nothing_to_change", "PATCH", patch, VICTIM, key(),
                 {"account_id": acc}, codes=_codes("missing_field")),
        HttpCase("replace:stop_price_on_limit", "PATCH", patch, VICTIM, key(),
                 {"account_id": acc, "stop_price": "2.00"}, codes=_codes("unexpected_field")),
        HttpCase("replace:unknown_field", "PATCH", patch, VICTIM, key(),
                 {"account_id": acc, "quantity": "2", "side": "sell"}),
        HttpCase("replace:by_attacker", "PATCH", patch, ATTACKER, key(),
                 {"account_id": acc, "quantity": "2"}, codes=_codes("account_not_found")),
        HttpCase("replace:by_attacker_own_account", "PATCH", patch, ATTACKER, key(),
                 {"account_id": target.attacker_account, "quantity": "2"},
                 codes=_codes("order_not_found")),
        HttpCase("replace:no_key", "PATCH", patch, VICTIM, (),
                 {"account_id": acc, "quantity": "2"}, codes=_codes("missing_idempotency_key")),
        HttpCase("cancel:by_attacker", "DELETE", f"/v1/orders/{order}", ATTACKER,
                 codes=_codes("order_not_found")),
        HttpCase("cancel:by_attacker_naming_account", "DELETE",
                 f"/v1/orders/{order}?account_id={acc}", ATTACKER,
                 codes=_codes("account_not_found")),
        HttpCase("cancel:no_token", "DELETE", f"/v1/orders/{order}", NOBODY,
                 codes=_codes("missing_token")),
        HttpCase("cancel:no_such_order", "DELETE", "/v1/orders/ord_no_such", VICTIM,
                 codes=_codes("order_not_found")),
        HttpCase("cancel:traversal", "DELETE", "/v1/orders/..%2F..%2Fv1%2Faccounts", VICTIM,
                 codes=_codes("order_not_found", "not_found")),
        HttpCase("cancel:long_id", "DELETE", "/v1/orders/" + "o" * 5000, VICTIM,
                 codes=_codes("order_not_found")),
    ]

    # Reads of someone else's account, and parameters out of range.
    for path in (f"/v1/accounts/{acc}", f"/v1/portfolio?account_id={acc}",
                 f"/v1/activities?account_id={acc}", f"/v1/orders?account_id={acc}",
                 f"/v1/orders/{order}", f"/v1/orders/{order}?account_id={acc}",
                 f"/v1/accounts/{acc}/commands/bad-1"):
        cases.append(HttpCase(f"read_by_attacker:{path}", "GET", path, ATTACKER,
                              codes=_codes("account_not_found", "order_not_found")))
        cases.append(HttpCase(f"read_without_token:{path}", "GET", path, NOBODY,
                              codes=_codes("missing_token")))
    reads = [
        ("orders_limit_negative", "/v1/orders?limit=-1"),
        ("orders_limit_zero", "/v1/orders?limit=0"),
        ("orders_limit_huge", "/v1/orders?limit=99999999999999999999"),
        ("orders_limit_5000_digits", "/v1/orders?limit=" + "9" * 5000),
        ("orders_limit_superscript", "/v1/orders?limit=" + urllib.parse.quote("²")),
        ("orders_limit_arabic", "/v1/orders?limit=" + urllib.parse.quote("٥")),
        ("orders_limit_float", "/v1/orders?limit=1.5"),
        ("orders_limit_nan", "/v1/orders?limit=NaN"),
        ("portfolio_no_account", "/v1/portfolio"),
        ("portfolio_empty_account", "/v1/portfolio?account_id="),
        ("portfolio_nul_account", "/v1/portfolio?account_id=%00"),
        ("activities_bad_time", f"/v1/activities?account_id={acc}&as_of=yesterday"),
        ("activities_naive_time", f"/v1/activities?account_id={acc}&as_of=2026-01-01T00:00:00"),
        ("activities_year_9999",
         f"/v1/activities?account_id={acc}&as_of=9999-12-31T23:59:59%2B00:00"),
        ("activities_year_1",
         f"/v1/activities?account_id={acc}&as_of=0001-01-01T00:00:00%2B23:59"),
        ("activities_far_offset",
         f"/v1/activities?account_id={acc}&as_of=9999-12-31T23:59:59-23:59"),
        ("quotes_none", "/v1/quotes"),
        ("quotes_commas", "/v1/quotes?symbols=,,,"),
        ("quotes_too_many", "/v1/quotes?symbols=" + ",".join(f"S{i}" for i in range(101))),
        ("quotes_bad_symbol", "/v1/quotes?symbols=AAPL,%00,../x"),
        ("quotes_long", "/v1/quotes?symbols=" + "A" * 5000),
        ("candles_bad_interval", "/v1/candles/AAPL?interval=2m"),
        ("candles_bad_symbol", "/v1/candles/..%2Fetc"),
        ("candles_limit_zero", "/v1/candles/AAPL?limit=0"),
        ("candles_limit_digits", "/v1/candles/AAPL?limit=" + "9" * 5000),
        ("candles_limit_superscript", "/v1/candles/AAPL?limit=" + urllib.parse.quote("³")),
        ("command_bad_key", f"/v1/accounts/{acc}/commands/" + urllib.parse.quote("a b")),
        ("command_long_key", f"/v1/accounts/{acc}/commands/" + "k" * 65),
        ("account_long_id", "/v1/accounts/" + "a" * 5000),
        ("account_nul", "/v1/accounts/%00"),
        ("unknown_path", "/v1/nothing-here"),
        ("unknown_path_deep", "/v1/" + "a/" * 500),
        ("double_slash", "/v1//orders"),
        ("encoded_slash", "/v1/accounts/a%2Fb"),
    ]
    cases += [HttpCase(f"read:{name}", "GET", path, VICTIM, ok=frozenset({200}))
              for name, path in reads]
    cases += [
        HttpCase("method:put_orders", "PUT", "/v1/orders", VICTIM, key(), {},
                 codes=_codes("method_not_allowed")),
        HttpCase("method:delete_accounts", "DELETE", f"/v1/accounts/{acc}", VICTIM,
                 codes=_codes("method_not_allowed")),
        HttpCase("method:post_portfolio", "POST", "/v1/portfolio", VICTIM, key(), {},
                 codes=_codes("method_not_allowed")),
        HttpCase("method:patch_accounts", "PATCH", "/v1/accounts", VICTIM, key(), {},
                 codes=_codes("method_not_allowed")),
    ]

    # Tokens, on a read and on an order.
    for name, header, code in bad_tokens(target.secret, VICTIM, target.now_s):
        cases.append(HttpCase(f"token:{name}:read", "GET", f"/v1/portfolio?account_id={acc}",
                              header, codes=_codes(code)))
        cases.append(HttpCase(f"token:{name}:order", "POST", "/v1/orders", header, key(),
                              {**ORDER, "account_id": acc}, codes=_codes(code)))

    # The demo login with bodies that are not a user id.
    body: Any
    for body in ({"user_id": ""}, {"user_id": "a b"}, {"user_id": "a" * 65},
                 {"user_id": "../victim"}, {"user_id": 5}, {"user_id": None},
                 {"user": "victim"}, {"user_id": "victim", "admin": True}, [], "victim"):
        cases.append(HttpCase(f"login:{json.dumps(body)[:40]}", "POST", "/v1/auth/token",
                              NOBODY, (), body))
    cases.append(HttpCase("login:deep", "POST", "/v1/auth/token", NOBODY, (),
                          b'{"user_id":' + b"[" * 5000 + b"]" * 5000 + b"}", raw=True))
    cases.append(HttpCase("accounts:unknown_field", "POST", "/v1/accounts", VICTIM, (),
                          {"type": "margin"}))
    cases.append(HttpCase("accounts:array", "POST", "/v1/accounts", VICTIM, (), []))
    return cases


def openapi_http_cases(document: dict[str, Any], target: Target, examples: int,
                       seed: int) -> list[HttpCase]:
    """Cases schemathesis generates from the published OpenAPI document: for each operation,
    `examples` positive (valid by the schema) and `examples` negative ones. Authorization is
    as generated (mostly garbage) for a third of them and the attacker's valid token for the
    rest, half of which aim at the victim's account: validation runs before ownership, so a
    body valid by the schema still meets every check and then `account_not_found`. The
    victim's own token is never used here: a request valid in every respect would place a
    real order, and the corpus is of bad input."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(document)
    cases: list[HttpCase] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err would raise here
        if operation.path == "/v1/stream":
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            found = _generated(operation.as_strategy(generation_mode=mode), examples, seed)
            for index, case in enumerate(found):
                cases.append(_from_schemathesis(operation, mode.value, index, case, target))
    return cases


def _generated(strategy: Any, examples: int, seed: int) -> list[Any]:
    """Up to `examples` values of a hypothesis strategy, the same ones for the same seed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Unsatisfiable

    found: list[Any] = []

    @settings(max_examples=examples, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    try:
        collect()
    except Unsatisfiable:  # nothing to negate (an operation without parameters)
        pass
    return found


_HEADER_SAFE = set(string.printable) - set("\r\n\x0b\x0c")


def _header_value(value: str) -> str:
    """A header value the client can send (generated ones may hold line breaks)."""
    return "".join(c if c in _HEADER_SAFE else "?" for c in value)


def _from_schemathesis(operation: Any, mode: str, index: int, case: Any,
                       target: Target) -> HttpCase:
    from schemathesis.core import NotSet

    method = operation.method.upper()
    headers = {name: _header_value(str(value)) for name, value in (case.headers or {}).items()}
    role = index % 3
    path_parameters = dict(case.path_parameters or {})
    query = dict(case.query or {})
    body = None if isinstance(case.body, NotSet) else case.body
    auth = headers.pop("Authorization", "")
    mutating = method != "GET"
    if role and operation.path not in ("/v1/auth/token", "/v1/accounts"):
        auth = ATTACKER
        if role == 2:  # aim at the victim's account and order
            if "account_id" in path_parameters:
                path_parameters["account_id"] = target.victim_account
            if "order_id" in path_parameters:
                path_parameters["order_id"] = target.victim_order
            if "account_id" in query:
                query["account_id"] = target.victim_account
            if isinstance(body, dict) and "account_id" in body:
                body = {**body, "account_id": target.victim_account}
    elif not auth:
        auth = NOBODY
    path = operation.path
    for name, value in path_parameters.items():
        text = str(value)
        # schemathesis percent-encodes what it generated; what we put in is plain
        quoted = text if "%" in text else urllib.parse.quote(text, safe="")
        path = path.replace("{" + name + "}", quoted or "%20")
    if query:
        path += "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
    raw = isinstance(body, bytes)
    ok = frozenset() if mutating else frozenset({200})
    if operation.path == "/v1/auth/token":
        ok = frozenset({201})  # a token is no state
    if mode == "positive" and operation.path == "/v1/accounts" and method == "POST":
        # a new account for whoever asks is what this operation is for: not bad input
        ok = frozenset({201})
    return HttpCase(f"openapi:{method} {operation.path}:{mode}:{index}", method, path, auth,
                    tuple(headers.items()), body, raw=raw,
                    content_type=case.media_type or ("application/json" if body is not None
                                                      else None), ok=ok)


def judge_http(case: HttpCase, status: int, content_type: str, body: bytes
               ) -> tuple[str, str | None]:
    """(how it was answered, failure or None)."""
    if 200 <= status < 300:
        if status in case.ok:
            return f"{status} served", None
        return f"{status} accepted", f"bad input accepted: {status} {body[:200]!r}"
    if content_type != PROBLEM:
        return f"{status} {content_type}", f"{status} {content_type}, not a problem: {body[:200]!r}"
    try:
        code = json.loads(body)["code"]
    except (ValueError, KeyError, TypeError):
        return f"{status} unreadable", f"{status} problem without a code: {body[:200]!r}"
    answer = f"{status} {code}"
    if status >= 500:
        return answer, f"server error {status} {code}: {body[:300]!r}"
    if not 400 <= status < 500:
        return answer, f"status {status}"
    if case.codes and code not in case.codes:
        return answer, f"code {code!r}, expected one of {sorted(case.codes)}"
    return answer, None


# ---- WebSocket ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WsCase:
    """One frame sent on a stream, authenticated first or not. `code`: the error frame's code
    expected (empty: any)."""

    name: str
    data: str | bytes
    authenticated: bool = True
    codes: frozenset[str] = frozenset()


def ws_cases(secret: str, victim: str, now_s: int) -> list[WsCase]:
    good_token = jwt.encode({"sub": victim, "iat": now_s, "exp": now_s + 600}, secret,
                            algorithm="HS256")
    frames: list[tuple[str, str | bytes, str]] = [
        ("not_json", "{op:", "malformed_json"),
        ("empty_text", "", "malformed_json"),
        ("binary_garbage", b"\xff\xfe\x00\x01", "malformed_json"),
        ("binary_json_op", b'{"op":"teleport"}', "invalid_message"),
        ("null", "null", "invalid_message"),
        ("array", "[]", "invalid_message"),
        ("number", "1e400", "invalid_message"),
        ("nan", "NaN", "malformed_json"),
        ("string", '"subscribe"', "invalid_message"),
        ("no_op", '{"quotes":["AAPL"]}', "invalid_message"),
        ("unknown_op", '{"op":"teleport"}', "invalid_message"),
        ("op_case", '{"op":"SUBSCRIBE","quotes":["AAPL"]}', "invalid_message"),
        ("op_number", '{"op":1}', "invalid_message"),
        ("op_null", '{"op":null}', "invalid_message"),
        ("op_list", '{"op":["subscribe"]}', "invalid_message"),
        ("subscribe_no_quotes", '{"op":"subscribe"}', "invalid_message"),
        ("subscribe_string", '{"op":"subscribe","quotes":"AAPL"}', "invalid_message"),
        ("subscribe_numbers", '{"op":"subscribe","quotes":[1,2]}', "invalid_message"),
        ("subscribe_nested", '{"op":"subscribe","quotes":[["AAPL"]]}', "invalid_message"),
        ("subscribe_bad_symbol", '{"op":"subscribe","quotes":["AA PL"]}', "invalid_symbol"),
        ("subscribe_nul_symbol", '{"op":"subscribe","quotes":["A\\u0000"]}', "invalid_symbol"),
        ("subscribe_long_symbol", '{"op":"subscribe","quotes":["' + "A" * 5000 + '"]}',
         "invalid_symbol"),
        ("subscribe_too_many", json.dumps({"op": "subscribe",
                                           "quotes": [f"S{i}" for i in range(600)]}),
         "too_many_symbols"),
        ("subscribe_unknown_field", '{"op":"subscribe","quotes":["AAPL"],"depth":5}',
         "invalid_message"),
        ("unsubscribe_bad", '{"op":"unsubscribe","quotes":[{}]}', "invalid_message"),
        ("ping_extra", '{"op":"ping","x":1}', "invalid_message"),
        ("auth_again", json.dumps({"op": "auth", "token": good_token}),
         "already_authenticated"),
        ("deep_arrays", "[" * 5000 + "]" * 5000, "invalid_message"),
        ("deep_objects", '{"op":' * 2000 + "1" + "}" * 2000, "invalid_message"),
        ("deep_in_quotes", '{"op":"subscribe","quotes":' + "[" * 5000 + "]" * 5000 + "}",
         "invalid_message"),
        ("deep_untyped", '{"a":' + "[" * 5000 + "]" * 5000 + "}", "invalid_message"),
        ("near_limit", '{"op":"ping","pad":"' + "x" * (BODY_BYTES_MAX - 40) + '"}',
         "invalid_message"),
        ("oversized", '{"op":"ping","pad":"' + "x" * (BODY_BYTES_MAX * 2) + '"}', "too_large"),
        ("oversized_binary", b"\x00" * (BODY_BYTES_MAX * 4), "too_large"),
        ("oversized_8x", "[" * (BODY_BYTES_MAX * 8), "too_large"),
        ("control_chars", '{"op":"ping"}\u0000\u0001', "malformed_json"),
    ]
    cases = [WsCase(name, data, True, _codes(code)) for name, data, code in frames]
    # Before `auth`: what needs a user is refused, the rest as above.
    cases += [
        WsCase("before_auth:subscribe", '{"op":"subscribe","quotes":["AAPL"]}', False,
               _codes("not_authenticated")),
        WsCase("before_auth:unsubscribe", '{"op":"unsubscribe","quotes":["AAPL"]}', False,
               _codes("not_authenticated")),
        WsCase("before_auth:unknown_op", '{"op":"teleport"}', False, _codes("invalid_message")),
        WsCase("before_auth:not_json", "{{", False, _codes("malformed_json")),
        WsCase("before_auth:oversized", "x" * (BODY_BYTES_MAX * 2), False, _codes("too_large")),
    ]
    for name, header, code in bad_tokens(secret, victim, now_s):
        token = header.partition(" ")[2] if header.lower().startswith("bearer") else header
        if not token.strip():
            continue
        cases.append(WsCase(f"auth:{name}", json.dumps({"op": "auth", "token": token}), False,
                            _codes(code, "invalid_token", "token_expired")))
    cases += [
        WsCase("auth:token_number", '{"op":"auth","token":5}', False, _codes("invalid_message")),
        WsCase("auth:token_missing", '{"op":"auth"}', False, _codes("invalid_message")),
        WsCase("auth:token_empty", '{"op":"auth","token":""}', False,
               _codes("invalid_token", "missing_token")),
    ]
    return cases


# ---- orders.commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandRecord:
    """A raw record for `orders.commands`. `key`: the record key (None: keyless). `partition`:
    None for the key's murmur2 partition. `timestamp_ms`: None for now. `reasons`: the dead
    letter reasons (state.dead_letters) or refusal reasons (orders.events) it may get."""

    name: str
    key: bytes | None
    value: bytes | None
    reasons: frozenset[str]
    idempotency_key: str | None = None  # for a refusal on orders.events
    partition: int | None = None
    timestamp_ms: int | None = None


def command_records(account: str, other_account: str, home_partition: int, partitions: int,
                    now: dt.datetime) -> list[CommandRecord]:
    """Records that must be dead-lettered, or decided as refused, and change nothing."""
    at = now.isoformat()
    key = account.encode()
    records: list[CommandRecord] = []

    def letter(name: str, value: bytes | None, *reasons: str, **extra: Any) -> None:
        records.append(CommandRecord(name, extra.pop("key", key), value, _codes(*reasons),
                                     **extra))

    def deposit(**fields: Any) -> dict[str, Any]:
        body = {"type": "deposit", "v": 1, "account_id": account,
                "idempotency_key": f"cmd-{len(records)}", "amount": "100.00",
                "submitted_at": at}
        body.update(fields)
        return {k: v for k, v in body.items() if v is not _MISSING}

    def place(**fields: Any) -> dict[str, Any]:
        body = {"type": "place_order", "v": 1, "account_id": account,
                "idempotency_key": f"cmd-{len(records)}", "symbol": "AAPL", "side": "buy",
                "order_type": "limit", "quantity": "1", "limit_price": "1.00",
                "submitted_at": at}
        body.update(fields)
        return {k: v for k, v in body.items() if v is not _MISSING}

    def encoded(body: dict[str, Any]) -> bytes:
        return json.dumps(body, allow_nan=True).encode()

    def refused_or_letter(name: str, body: dict[str, Any], *reasons: str) -> None:
        letter(name, encoded(body), *reasons, idempotency_key=body.get("idempotency_key"))

    invalid = "invalid_payload"
    letter("not_json", b"{not json", "malformed_json")
    letter("binary", b"\xff\xfe\x00\x01\x02", "malformed_json")
    letter("json_null", b"null", invalid)
    letter("json_array", b"[]", invalid)
    letter("json_string", b'"deposit"', invalid)
    letter("json_number", b"1e400", invalid)
    letter("json_nan", b"NaN", "malformed_json")
    letter("truncated", encoded(deposit())[:-5], "malformed_json")
    letter("trailing_garbage", encoded(deposit()) + b"}", "malformed_json")
    letter("tombstone", None, "tombstone")
    letter("empty", b"", "malformed_json")
    letter("too_large", encoded(deposit(pad="x" * 70_000)), "too_large")
    letter("deep_arrays", b"[" * 30000 + b"]" * 30000, invalid, "malformed_json")
    letter("deep_in_field", b'{"type":"deposit","v":1,"amount":' + b"[" * 20000
           + b"]" * 20000 + b"}", invalid, "malformed_json")
    letter("deep_before_type", b'{"x":' + b"[" * 20000 + b"]" * 20000
           + b',"type":"deposit"}', "malformed_json", invalid)
    letter("unknown_type", encoded(deposit(type="teleport")), invalid)
    letter("type_number", encoded(deposit(type=5)), invalid)
    letter("type_missing", encoded(deposit(type=_MISSING)), invalid)
    letter("v_2", encoded(deposit(v=2)), invalid)
    letter("v_string", encoded(deposit(v="1")), invalid)
    letter("v_null", encoded(deposit(v=None)), invalid)
    letter("missing_amount", encoded(deposit(amount=_MISSING)), invalid)
    letter("missing_key", encoded(deposit(idempotency_key=_MISSING)), invalid)
    letter("missing_account", encoded(deposit(account_id=_MISSING)), invalid, "key_mismatch")
    letter("missing_submitted_at", encoded(deposit(submitted_at=_MISSING)), invalid)
    letter("unknown_field", encoded(deposit(bonus="1000000.00")), invalid)
    letter("amount_float", encoded(deposit(amount=100.0)), "not_decimal_string", invalid)
    letter("amount_int", encoded(deposit(amount=100)), "not_decimal_string", invalid)
    letter("amount_json_1e400", encoded(deposit(amount=1e400)), "not_decimal_string", invalid,
           "malformed_json")
    letter("amount_json_nan", encoded(deposit(amount=float("nan"))), "malformed_json",
           "not_decimal_string", invalid)
    letter("amount_list", encoded(deposit(amount=["100"])), invalid)
    letter("amount_words", encoded(deposit(amount="a hundred")), invalid)
    letter("key_too_long", encoded(deposit(idempotency_key="k" * 10_000)), invalid)
    letter("key_empty", encoded(deposit(idempotency_key="")), invalid)
    letter("submitted_at_garbage", encoded(deposit(submitted_at="yesterday")), invalid)
    letter("submitted_at_number", encoded(deposit(submitted_at=1700000000)), invalid)
    letter("submitted_at_year_0", encoded(deposit(submitted_at="0000-01-01T00:00:00Z")),
           invalid)
    letter("key_mismatch", encoded(deposit(account_id=other_account)), "key_mismatch")
    letter("keyless", encoded(deposit()), "key_mismatch", invalid, key=None)
    letter("key_not_utf8", encoded(deposit()), "key_mismatch", key=b"\xff\xfe")
    letter("wrong_partition", encoded(deposit()), "wrong_partition",
           partition=(home_partition + 1) % partitions)
    letter("timestamp_1970", encoded(deposit()), "invalid_timestamp", timestamp_ms=1)
    letter("timestamp_2300", encoded(deposit()), "invalid_timestamp",
           timestamp_ms=int(dt.datetime(2300, 1, 1, tzinfo=dt.UTC).timestamp() * 1000))
    letter("symbol_lower", encoded(place(symbol="aapl")), invalid)
    letter("symbol_bad", encoded(place(symbol="AA PL")), invalid)
    letter("side_bad", encoded(place(side="short")), invalid)
    letter("order_type_bad", encoded(place(order_type="iceberg")), invalid)
    letter("quantity_float", encoded(place(quantity=1.5)), "not_decimal_string", invalid)
    letter("cancel_missing_order", encoded({"type": "cancel_order", "v": 1,
                                            "account_id": account, "idempotency_key": "c-1",
                                            "submitted_at": at}), invalid)
    # Well-formed, but no command that could be carried out: decided, refused, never booked.
    no_good = ("invalid_amount", "invalid_order", "quantity_too_large", "notional_too_large",
               "insufficient_buying_power", "insufficient_withdrawable_cash",
               "unknown_order", "order_not_open", "unknown_deposit", "invalid_payload",
               "not_decimal_string", "rate_limited")
    for text in ("NaN", "sNaN", "Infinity", "-Infinity", "1e400", "-100.00", "0", "0.001",
                 "1" + "0" * 40, "1e-400", "100.000000000000000000000000000001"):
        refused_or_letter(f"deposit_amount={text}", deposit(amount=text), *no_good)
        refused_or_letter(f"withdraw_amount={text}",
                          deposit(type="withdraw", amount=text), *no_good)
    for text in ("NaN", "Infinity", "1e400", "-5", "0", "1e-400", "0.0000001",
                 "9" * 30):
        refused_or_letter(f"quantity={text}", place(quantity=text), *no_good)
    for text in ("NaN", "Infinity", "1e400", "-1", "0", "209.500000000000000000000000000001",
                 "0.00001", "1" + "0" * 30):
        refused_or_letter(f"limit_price={text}", place(limit_price=text), *no_good)
        refused_or_letter(f"reference_price={text}",
                          place(order_type="market", limit_price=_MISSING,
                                reference_price=text, reference_time=at), *no_good,
                          "no_reference_price", "stale_reference_price")
    refused_or_letter("cancel_unknown_order", {
        "type": "cancel_order", "v": 1, "account_id": account, "idempotency_key": "c-2",
        "order_id": "ord_no_such", "submitted_at": at}, *no_good)
    refused_or_letter("replace_nan", {
        "type": "replace_order", "v": 1, "account_id": account, "idempotency_key": "r-1",
        "order_id": "ord_no_such", "quantity": "NaN", "submitted_at": at}, *no_good)
    refused_or_letter("ach_return_unknown", {
        "type": "ach_return", "v": 1, "account_id": account, "idempotency_key": "a-1",
        "deposit_idempotency_key": "never-deposited", "submitted_at": at}, *no_good)
    return records


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


# ---- connector files ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorFile:
    """A connector file that must be refused: its name, bytes, and the words the one-line
    error must hold besides the file name (a field or what is wrong)."""

    name: str
    text: bytes
    names: tuple[str, ...]


_SYNTHETIC = 'name = "feed"\nconnector = "synthetic_quotes"\ntopic = "quotes"\n'
_SETTINGS = _SYNTHETIC + '[settings]\nsymbols = ["AAPL"]\n'


def connector_files() -> list[ConnectorFile]:
    files = [
        ("bad_toml", b"name = [", ("cannot read",)),
        ("unclosed_string", b'name = "feed\n', ("cannot read",)),
        ("not_utf8", b'name = "\xff\xfe"\n', ("cannot read",)),
        ("empty", b"", ("name",)),
        ("nul_bytes", b"\x00\x00\x00", ("cannot read",)),
        ("unknown_field", (_SYNTHETIC + "colour = 1\n").encode(), ("colour",)),
        ("unknown_class", b'name = "a"\nconnector = "nope"\ntopic = "quotes"\n', ("nope",)),
        ("class_number", b'name = "a"\nconnector = 5\ntopic = "quotes"\n', ("connector",)),
        ("missing_class", b'name = "a"\ntopic = "quotes"\n', ("connector",)),
        ("missing_name", b'connector = "synthetic_quotes"\ntopic = "quotes"\n', ("name",)),
        ("empty_name", b'name = ""\nconnector = "market_status"\ntopic = "market.status"\n',
         ("name",)),
        ("missing_topic", b'name = "a"\nconnector = "market_status"\n', ("topic",)),
        ("settings_not_table", (_SYNTHETIC + 'settings = "fast"\n').encode(), ("settings",)),
        ("unknown_setting", (_SETTINGS + "colour = 1\n").encode(), ("settings", "colour")),
        ("rate_string", (_SETTINGS + 'rate_per_s = "fast"\n').encode(), ("rate_per_s",)),
        ("rate_negative", (_SETTINGS + "rate_per_s = -1\n").encode(), ("rate_per_s",)),
        ("rate_nan", (_SETTINGS + "rate_per_s = nan\n").encode(), ("rate_per_s",)),
        ("rate_inf", (_SETTINGS + "rate_per_s = inf\n").encode(), ("rate_per_s",)),
        ("volatility_nan", (_SETTINGS + "volatility_bps = nan\n").encode(),
         ("volatility_bps",)),
        ("volatility_inf", (_SETTINGS + "volatility_bps = inf\n").encode(),
         ("volatility_bps",)),
        ("volatility_negative", (_SETTINGS + "volatility_bps = -1.0\n").encode(),
         ("volatility_bps",)),
        ("probability_nan", (_SETTINGS + "trade_probability = nan\n").encode(),
         ("trade_probability",)),
        ("seed_float", (_SETTINGS + "seed = 1.5\n").encode(), ("seed",)),
        ("quotes_max_huge", (_SETTINGS + "quotes_max = 1e400\n").encode(), ("quotes_max",)),
        ("no_symbols", (_SYNTHETIC + "[settings]\nsymbols = []\n").encode(), ("symbols",)),
        ("bad_symbol", (_SYNTHETIC + '[settings]\nsymbols = ["AA PL"]\n').encode(),
         ("symbols",)),
        ("symbols_not_list", (_SYNTHETIC + '[settings]\nsymbols = "AAPL"\n').encode(),
         ("symbols",)),
        ("start_price_nan",
         (_SETTINGS + '[settings.start_prices]\nAAPL = "NaN"\n').encode(), ("start_prices",)),
        ("start_price_negative",
         (_SETTINGS + '[settings.start_prices]\nAAPL = "-5"\n').encode(), ("start_prices",)),
        ("start_price_words",
         (_SETTINGS + '[settings.start_prices]\nAAPL = "cheap"\n').encode(), ("start_prices",)),
        ("validation_unknown", (_SETTINGS + "[settings.validation]\nstale_ms = 3\n").encode(),
         ("stale_ms",)),
        ("cross_tolerance_nan",
         (_SETTINGS + '[settings.validation]\ncross_tolerance_bps = "NaN"\n').encode(),
         ("cross_tolerance_bps",)),
        ("cross_tolerance_negative",
         (_SETTINGS + '[settings.validation]\ncross_tolerance_bps = "-1"\n').encode(),
         ("cross_tolerance_bps",)),
        ("stale_negative",
         (_SETTINGS + "[settings.validation]\nstale_ms_max = -5\n").encode(),
         ("stale_ms_max",)),
        ("replay_no_path", b'name = "r"\nconnector = "file_replay"\ntopic = "quotes"\n'
                           b'[settings]\n', ("path",)),
        ("replay_missing_file", b'name = "r"\nconnector = "file_replay"\ntopic = "quotes"\n'
                                b'[settings]\npath = "nowhere.csv"\n', ("settings.path",)),
        ("replay_speed_nan", b'name = "r"\nconnector = "file_replay"\ntopic = "quotes"\n'
                             b'[settings]\npath = "replay_speed_nan.toml"\nformat = "csv"\n'
                             b'speed = nan\n', ("speed",)),
        ("replay_bad_symbol", b'name = "r"\nconnector = "file_replay"\ntopic = "quotes"\n'
                              b'[settings]\npath = "replay_bad_symbol.toml"\nformat = "csv"\n'
                              b'symbols = ["aapl"]\n', ("symbols",)),
        ("replay_format", b'name = "r"\nconnector = "file_replay"\ntopic = "quotes"\n'
                          b'[settings]\npath = "x.csv"\nformat = "xml"\n', ("format",)),
        ("status_bad_event",
         b'name = "s"\nconnector = "market_status"\ntopic = "market.status"\n'
         b'[[settings.events]]\nsymbol = "GME"\nstatus = "exploded"\n', ("status",)),
        ("status_bad_symbol",
         b'name = "s"\nconnector = "market_status"\ntopic = "market.status"\n'
         b'[[settings.events]]\nsymbol = "G M E"\nstatus = "halted"\n', ("symbol",)),
        ("deep_settings", (_SETTINGS + "[settings.validation]\nx = " + "[" * 500 + "]" * 500
                           + "\n").encode(), ("nested too deeply",)),
    ]
    return [ConnectorFile(name, text, names) for name, text, names in files]


JSON_CONNECTOR_FILES: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("json_array", b"[]", ("object",)),
    ("json_infinity", b'{"name":"a","connector":"synthetic_quotes","topic":"quotes",'
                      b'"settings":{"symbols":["AAPL"],"volatility_bps":Infinity}}',
     ("volatility_bps",)),
    ("json_garbage", b"{name:", ("cannot read",)),
    ("json_nan", b'{"name":"a","connector":"synthetic_quotes","topic":"quotes",'
                 b'"settings":{"symbols":["AAPL"],"rate_per_s":NaN}}', ("rate_per_s",)),
    ("json_deep", b'{"name":' + b"[" * 5000 + b"]" * 5000 + b"}", ("nested too deeply",)),
]


def judge_connector_error(path_name: str, message: str, names: Iterable[str]
                          ) -> str | None:
    """The failure of a refusal's message, or None: one line, naming the file and each of
    `names`."""
    if "\n" in message.strip():
        return f"not one line: {message!r}"
    if path_name not in message:
        return f"does not name the file: {message!r}"
    missing = [name for name in names if name not in message]
    if missing:
        return f"does not name {missing}: {message[:300]!r}"
    return None


# ---- FIX ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixCase:
    """An execution report the market maker sends for the victim's open order (ClOrdID,
    account, symbol, quantity 1), with the ExecID `exec_id`. `refused_by`: "session" (the
    gateway's FIX engine answers a Reject, nothing is forwarded) or the alert codes on
    `orders.events` that say it was not booked (the gateway's or the account topology's)."""

    name: str
    exec_type: str  # "new" or "trade": the report it starts from
    fields: tuple[tuple[int, str], ...]  # then set (tag, value) on it
    refused_by: frozenset[str]
    remove: tuple[int, ...] = ()


SESSION = frozenset({"session"})
NOT_BOOKED = frozenset({"invalid_fill", "unusable_report"})


def fix_cases(attacker_account: str) -> list[FixCase]:
    """Tags: 1 Account, 17 ExecID, 31 LastPx, 32 LastQty, 54 Side, 150 ExecType, 14 CumQty,
    151 LeavesQty. tests/integration/gateways/test_fix_bad_input.py covers unknown ClOrdIDs,
    resent fills, Rejects and BusinessMessageRejects of our requests, and its
    `malformed_reports` (no ExecID, ExecType Z, LastQty "ten", TransactTime "yesterday"),
    which the whole-stack run sends too; these are more reports of an order the market maker
    has, wrong in ways a data dictionary does or does not catch."""
    trade = "trade"
    return [
        # The FIX engine's data dictionary refuses these (Reject back, never forwarded).
        FixCase("last_qty_nan", trade, ((32, "NaN"),), SESSION),
        FixCase("last_qty_1e400", trade, ((32, "1e400"),), SESSION),
        FixCase("last_px_infinity", trade, ((31, "Infinity"),), SESSION),
        FixCase("last_px_comma", trade, ((31, "100,01"),), SESSION),
        FixCase("cum_qty_words", trade, ((14, "all"),), SESSION),
        # Well-formed FIX, but not a report the gateway can use: an `unusable_report` alert.
        FixCase("another_account", trade, ((1, attacker_account),),
                frozenset({"unusable_report"})),
        FixCase("side_undisclosed", trade, ((54, "7"),), frozenset({"unusable_report"})),
        FixCase("exec_type_trade_cancel", trade, ((150, "H"),), frozenset({"unusable_report"})),
        # Well-formed and usable, but no fill: the account topology refuses to book it.
        FixCase("fill_negative_qty", trade, ((32, "-1"), (14, "-1"), (151, "2")), NOT_BOOKED),
        FixCase("fill_zero_qty", trade, ((32, "0"), (14, "0"), (151, "1")), NOT_BOOKED),
        FixCase("fill_zero_price", trade, ((31, "0"),), NOT_BOOKED),
        FixCase("fill_negative_price", trade, ((31, "-5"),), NOT_BOOKED),
        FixCase("fill_price_30_decimals", trade,
                ((31, "100.010000000000000000000000000001"),), NOT_BOOKED),
        FixCase("fill_qty_7_decimals", trade,
                ((32, "0.0000001"), (14, "0.0000001"), (151, "0.9999999")), NOT_BOOKED),
    ]


# ---- runners --------------------------------------------------------------------------------


async def run_http(base_url: str, cases: list[HttpCase], tokens: dict[str, str],
                   document: dict[str, Any], tally: Tally, concurrency: int = 4) -> None:
    """Send every case; judge each answer (and hold it to the published document)."""
    import asyncio

    import aiohttp
    from yarl import URL

    from tests.openapi_answers import AnswerMismatch, check_answer

    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, case: HttpCase) -> None:
        headers = dict(case.headers)
        if case.auth in tokens:
            headers["Authorization"] = f"Bearer {tokens[case.auth]}"
        elif case.auth != NOBODY:
            headers["Authorization"] = case.auth
        skip: tuple[str, ...] = ()
        if case.content_type is not None:
            headers["Content-Type"] = case.content_type
        else:
            skip = ("Content-Type",)
        async with gate:
            try:
                async with session.request(
                        case.method, URL(base_url + case.path, encoded=True),
                        data=case.body_bytes(), headers=headers, skip_auto_headers=skip,
                        allow_redirects=False) as response:
                    status, content_type = response.status, response.content_type
                    body = await response.read()
            except (TimeoutError, aiohttp.ClientError) as error:
                tally.record("http", case.name, "no answer", f"no answer: {error!r}")
                return
        answer, failure = judge_http(case, status, content_type, body)
        if failure is None and status != 405:  # 405: a method the document has not
            try:
                check_answer(document, case.method, case.path.split("?")[0], status,
                             content_type, body)
            except AnswerMismatch as error:
                failure = f"answer not as documented: {str(error)[:300]}"
        tally.record("http", case.name, answer, failure)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, case) for case in cases))


# Requests the HTTP server's parser refuses before the application sees them: aiohttp answers
# these itself (400 or 413 text/plain, connection closed); never a 5xx.
PROTOCOL_CASES: list[tuple[str, bytes]] = [
    ("not_http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"),
    ("bad_method", b"G(T /v1/orders HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("bad_version", b"GET /v1/orders HTTP/9.9\r\nHost: x\r\n\r\n"),
    ("header_too_large", b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + b"A" * 20000 + b"\r\n\r\n"),
    ("request_line_too_long", b"GET /v1/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("header_no_colon", b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nBroken header\r\n\r\n"),
    ("header_nul", b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
    ("content_length_negative", b"POST /v1/orders HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: -5\r\n\r\n"),
    ("content_length_twice", b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                             b"Content-Length: 3\r\n\r\n{}"),
    ("chunk_size_garbage", b"POST /v1/orders HTTP/1.1\r\nHost: x\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
    ("chunked_and_length", b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
]


def run_protocol(host: str, port: int, tally: Tally) -> None:
    """Raw bytes on a fresh connection each: a 4xx status line back (or the connection closed
    with nothing, for bytes that are not HTTP at all), never a 5xx, never a hang."""
    import socket

    for name, raw in PROTOCOL_CASES:
        hung = False
        with socket.create_connection((host, port), timeout=10) as conn:
            try:
                conn.sendall(raw)  # the write side stays open: the answer must come anyway
            except OSError:
                pass  # the server may close while we still write (a header too large)
            answer = b""
            try:
                while chunk := conn.recv(65536):
                    answer += chunk
            except TimeoutError:
                hung = not answer
            except ConnectionResetError:
                pass
        line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = line.split(" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        if hung:
            tally.record("http_protocol", name, "no answer", "no answer in 10 s")
        elif status is None:
            tally.record("http_protocol", name, "closed" if not answer else "garbled",
                         None if not answer else f"not an HTTP answer: {answer[:100]!r}")
        else:
            tally.record("http_protocol", name, f"{status}",
                         None if 400 <= status < 500 else f"status {status}: {answer[:200]!r}")


async def run_ws(url: str, cases: list[WsCase], token: str, tally: Tally) -> None:
    """Each case on a stream of its own: its `error` frame, then `ping` still answers `pong`
    on the same connection. A frame past the hard cap closes the stream with 1009."""

    import aiohttp

    from gateways.http.websocket import FRAME_BYTES_HARD_MAX

    async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
        while True:  # heartbeats and quotes are not what is waited for
            message = await ws.receive(timeout=10)
            if message.type is not aiohttp.WSMsgType.TEXT:
                return message
            if json.loads(message.data).get("type") not in ("heartbeat", "quote"):
                return message

    async with aiohttp.ClientSession() as session:
        for case in cases:
            async with session.ws_connect(url, max_msg_size=0) as ws:
                if case.authenticated:
                    await ws.send_str(json.dumps({"op": "auth", "token": token}))
                    welcome = await receive(ws)
                    assert "authenticated" in str(welcome.data), welcome
                if isinstance(case.data, bytes):
                    await ws.send_bytes(case.data)
                else:
                    await ws.send_str(case.data)
                try:
                    message = await receive(ws)
                except TimeoutError:
                    tally.record("websocket", case.name, "no answer", "no answer in 10 s")
                    continue
                if message.type is not aiohttp.WSMsgType.TEXT:
                    tally.record("websocket", case.name, f"{message.type.name} {message.data}",
                                 f"no error frame: {message.type.name} {message.data} "
                                 f"{message.extra}")
                    continue
                frame = json.loads(message.data)
                code = frame.get("code")
                failure = None
                if frame.get("type") != "error":
                    failure = f"not an error frame: {message.data[:200]}"
                elif case.codes and code not in case.codes:
                    failure = f"code {code!r}, expected one of {sorted(case.codes)}"
                await ws.send_str('{"op":"ping"}')
                try:
                    pong = await receive(ws)
                    if pong.type is not aiohttp.WSMsgType.TEXT \
                            or json.loads(pong.data).get("type") != "pong":
                        failure = failure or f"connection not kept: {pong.type.name}"
                except TimeoutError:
                    failure = failure or "no pong after the error"
                tally.record("websocket", case.name, f"error {code}, kept", failure)
        # Past the hard cap the connection is closed (1009): its memory stays bounded.
        async with session.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str("x" * (FRAME_BYTES_HARD_MAX + 1))
            message = await receive(ws)
            closed = message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            tally.record("websocket", "past_hard_cap", f"closed {ws.close_code}",
                         None if closed and ws.close_code == 1009
                         else f"not closed 1009: {message.type.name} {message.data}")


def run_connector_files(directory: Any, tally: Tally) -> None:
    """Each file alone in a directory of its own, loaded as `brokerage up` loads them."""
    from pathlib import Path

    from connectors.config import load_connector_dir
    from connectors.exceptions import ConnectorConfigError

    cases = [(c.name, c.name + ".toml", c.text, c.names) for c in connector_files()]
    cases += [(name, name + ".json", text, names) for name, text, names in JSON_CONNECTOR_FILES]
    for name, file_name, text, names in cases:
        folder = Path(directory) / name
        folder.mkdir(parents=True)
        (folder / file_name).write_bytes(text)
        try:
            load_connector_dir(folder)
        except ConnectorConfigError as error:
            tally.record("connector_files", name, "refused, one line",
                         judge_connector_error(file_name, str(error), names))
        except Exception as error:  # noqa: BLE001 - what the corpus is for
            tally.record("connector_files", name, type(error).__name__,
                         f"{type(error).__name__}: {str(error)[:200]}")
        else:
            tally.record("connector_files", name, "loaded", "a bad file was loaded")


def run_commands(bootstrap: str, prefix: str, records: list[CommandRecord], tally: Tally,
                 timeout_s: float = 60.0) -> None:
    """Produce each record straight to `orders.commands`, then read `dlq.orders.commands` and
    `orders.events` until every record has its answer: a dead letter with a reason, or (a
    well-formed command that cannot be carried out) a refusal. An acceptance is a failure."""
    import time

    from confluent_kafka import Consumer, Producer, TopicPartition

    from state import dead_letters
    from state.messages import CommandAccepted, CommandRejected, OrderEvent, OrderState
    from state.topics import Topic, decode, dlq_name

    commands = prefix + Topic.ORDERS_COMMANDS
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": 5, "message.max.bytes": 1_000_000})
    where: dict[tuple[int, int], CommandRecord] = {}
    delivery_errors: list[str] = []

    def delivered(record: CommandRecord) -> Callable[[Any, Any], None]:
        def report(error: Any, message: Any) -> None:
            if error is not None:
                delivery_errors.append(f"{record.name}: {error}")
            else:
                where[(message.partition(), message.offset())] = record
        return report

    for record in records:
        extra: dict[str, Any] = {}
        if record.partition is not None:
            extra["partition"] = record.partition
        if record.timestamp_ms is not None:
            extra["timestamp"] = record.timestamp_ms
        producer.produce(commands, key=record.key, value=record.value,
                         on_delivery=delivered(record), **extra)
    assert producer.flush(30) == 0 and not delivery_errors, delivery_errors

    by_key = {r.idempotency_key: r for r in records if r.idempotency_key}
    answered: dict[str, tuple[str, str | None]] = {}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bad-input-{time.time()}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 50})
    topics = [prefix + dlq_name(Topic.ORDERS_COMMANDS), prefix + Topic.ORDERS_EVENTS]
    assignment = []
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        assignment += [TopicPartition(topic, p, 0) for p in metadata.partitions]
    consumer.assign(assignment)
    deadline = time.monotonic() + timeout_s
    try:
        while len(answered) < len(records) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            if message.topic() == topics[0]:
                envelope = json.loads(message.value())
                lettered = where.get((envelope["partition"], envelope["offset"]))
                if lettered is not None and envelope["source_topic"] == commands:
                    reason = dead_letters.reason_of(envelope["error"])
                    answered[lettered.name] = (
                        f"dead letter: {reason}",
                        None if reason in lettered.reasons
                        else f"dead-lettered as {reason!r} ({envelope['error'][:150]}), "
                             f"expected one of {sorted(lettered.reasons)}")
                continue
            event = decode(Topic.ORDERS_EVENTS, message.value())
            key = getattr(event, "idempotency_key", None)
            refused = by_key.get(key) if key else None
            if refused is None or refused.name in answered:
                continue
            if isinstance(event, CommandRejected) or (
                    isinstance(event, OrderEvent) and event.state is OrderState.REJECTED):
                reason = str(event.reason)
                answered[refused.name] = (
                    f"refused: {reason}",
                    None if reason in refused.reasons
                    else f"refused as {reason!r}, expected one of {sorted(refused.reasons)}")
            elif isinstance(event, CommandAccepted | OrderEvent):
                answered[refused.name] = ("accepted", f"decided and accepted: {event!r:.300}")
    finally:
        consumer.close()
    for record in records:
        answer, failure = answered.get(record.name, ("no answer", f"no answer in {timeout_s} s"))
        tally.record("orders.commands", record.name, answer, failure)


def fix_report(case: FixCase, cl_ord_id: str, account: str, symbol: str, exec_id: str) -> Any:
    """The case's FIX ExecutionReport for the victim's order (quantity 1)."""
    from gateways.simulator.application import report_message
    from gateways.simulator.book import Report
    from state.messages import ExecType, Side

    trade = case.exec_type == "trade"
    filled = Decimal(1) if trade else Decimal(0)
    report = Report(cl_ord_id=cl_ord_id, order_id=f"X-{cl_ord_id}", exec_id=exec_id,
                    exec_type=ExecType.TRADE if trade else ExecType.NEW,
                    ord_status="2" if trade else "0", account=account, symbol=symbol,
                    side=Side.BUY, order_qty=Decimal(1), last_qty=filled,
                    last_px=Decimal("1.00") if trade else Decimal(0), cum_qty=filled,
                    leaves_qty=Decimal(1) - filled,
                    avg_px=Decimal("1.00") if trade else Decimal(0))
    message = report_message(report, dt.datetime.now(dt.UTC))
    for tag in case.remove:
        message.removeField(tag)
    for tag, value in case.fields:
        message.setField(tag, value)
    return message

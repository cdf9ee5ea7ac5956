from __future__ import annotations

from decimal import Decimal

from connectors.runtime import Publish
from connectors.synthetic import SyntheticQuotes, SyntheticQuotesSettings
from state.messages import Quote
from tests.unit.connectors.fakes import FakeClock, play

SYMBOLS = ("AAPL", "MSFT", "TSLA", "GME", "SPY")


def run(seed: int = 7, seconds: float = 10.0, **settings: object) -> list[Quote]:
    feed = SyntheticQuotes(SyntheticQuotesSettings(symbols=SYMBOLS, seed=seed,
                                                   **settings))  # type: ignore[arg-type]
    steps = [step for _, step in play(feed, FakeClock(), until_s=seconds)]
    assert all(isinstance(step, Publish) for step in steps), "a good feed rejects nothing"
    return [step.message for step in steps if isinstance(step, Publish)]  # type: ignore[misc]


def prices(quotes: list[Quote]) -> list[tuple[object, ...]]:
    return [(q.symbol, q.bid, q.ask, q.bid_size, q.ask_size, q.last, q.last_size) for q in quotes]


def test_a_seed_repeats_and_another_seed_differs() -> None:
    assert prices(run(seed=7)) == prices(run(seed=7))
    assert prices(run(seed=7)) != prices(run(seed=8))


def test_rate_is_kept_and_symbols_are_round_robin() -> None:
    quotes = run(rate_per_s=50, seconds=10)
    assert 495 <= len(quotes) <= 505
    assert [q.symbol for q in quotes[:10]] == list(SYMBOLS) * 2


def test_quotes_look_like_an_nbbo() -> None:
    quotes = run(rate_per_s=1000, seconds=20, start_prices={"GME": Decimal("23.40")})
    for q in quotes:
        assert 0 < q.bid < q.ask
        assert q.bid == q.bid.quantize(Decimal("0.01"))
        assert (q.ask - q.bid) / q.bid < Decimal("0.002")  # a few bps wide, never absurd
        assert q.bid_size % 100 == 0 and q.bid_size > 0
        assert (q.last is None) == (q.last_size is None)
        if q.last is not None:
            assert q.last in (q.bid, q.ask)
    gme = [q for q in quotes if q.symbol == "GME"]
    assert abs(gme[0].bid - Decimal("23.40")) < 1  # starts where configured
    assert 0.2 < sum(q.last is not None for q in quotes) / len(quotes) < 0.4


def test_quotes_max_bounds_an_unpaced_feed() -> None:
    assert len(run(rate_per_s=0, quotes_max=2_500)) == 2_500


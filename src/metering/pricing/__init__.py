"""Bill math: pure functions, no I/O. The one place money is computed.

Rules, in order:

1. billable = max(0, quantity - included)
2. the price's model turns `billable` into an exact amount:
   * per_unit:  billable * unit_amount
   * package:   ceil (or floor) of billable / package_size, times the package amount
   * graduated: each unit at the rate of the tier it falls in, plus the flat
                amount of every tier that has at least one unit
   * volume:    every unit at the rate of the tier the total falls in, plus
                that tier's flat amount
   A tier's `up_to` is inclusive: with up_to = 100, unit 100 is in that tier
   and unit 100.5 in the next. A billable quantity of 0 reaches no tier and
   costs nothing.
3. the line total is rounded once, half-even, to the currency's minor unit.

Everything is decimal arithmetic in an exact context: a float can never
appear, and any inexact step raises instead of rounding silently.
"""

from metering.pricing.bill import LineCharge, TierCharge, price_line, round_money

__all__ = ["LineCharge", "TierCharge", "price_line", "round_money"]

"""The interpolation rule, worked by hand: the partner and alpha it picks from validation
numbers alone."""

import pytest

from mmrm.interpolate import choose


def row(partner, alpha, val, wrong):
    return {"partner": partner, "alpha": alpha, "val_accuracy": val,
            "val_proxy_wrong_accuracy": wrong}


def test_the_docstring_example():
    table = [row("none", 0.0, 0.95, 0.40), row("a", 0.5, 0.945, 0.60),
             row("a", 1.0, 0.90, 0.80), row("b", 0.5, 0.955, 0.60)]
    chosen = choose(table, 0.95, 0.01)
    # a at 1.0 is .05 below the standard RM: out; a .5 and b .5 tie where the proxy is wrong,
    # b has the higher validation accuracy
    assert (chosen["partner"], chosen["alpha"]) == ("b", 0.5)
    assert chosen["reference_accuracy"] == 0.95 and chosen["tolerance"] == 0.01


def test_the_standard_rm_when_every_partner_costs_too_much():
    table = [row("none", 0.0, 0.95, 0.40), row("a", 0.5, 0.93, 0.90)]
    assert choose(table, 0.95, 0.01)["partner"] == "none"
    # the tolerance is inclusive
    assert choose([row("none", 0.0, 0.95, 0.4), row("a", 0.5, 0.94, 0.9)], 0.95,
                  0.01)["partner"] == "a"


def test_ties_go_to_the_smaller_alpha_then_the_table_order():
    table = [row("none", 0.0, 0.95, 0.4), row("a", 0.8, 0.95, 0.7), row("a", 0.6, 0.95, 0.7),
             row("b", 0.6, 0.95, 0.7)]
    assert (choose(table, 0.95, 0.0)["partner"], choose(table, 0.95, 0.0)["alpha"]) == \
        ("a", 0.6)


def test_a_table_without_the_standard_rm_can_leave_nothing():
    with pytest.raises(ValueError, match="standard RM itself"):
        choose([row("a", 0.5, 0.5, 0.9)], 0.95, 0.01)

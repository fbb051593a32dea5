"""
The matrix router's language: parsing with positioned errors, references,
cycles, and the solver's choice (cheapest eviction, ties by definition
order, a model in no set runs alone) -- without expanding combinations.
"""

import pytest

from llamaswap.config.matrix import MatrixError, compile_sets

MODELS = {f"m{index}" for index in range(200)} | {"a", "b", "c", "d", "e"}


def program(**sets: str):
    return compile_sets(list(sets.items()), lambda name: name if name in MODELS else None)


def error_of(**sets: str) -> str:
    with pytest.raises(MatrixError) as info:
        program(**sets)
    return str(info.value)


@pytest.mark.parametrize(
    "expression, message",
    [
        ("a & (b", "set 's' ('a & (b'): missing ')' for the '(' at position 4 (found 'the end' at 6)"),
        ("a &", "set 's' ('a &'): the expression ends where a model or '(' was expected (position 3)"),
        ("a b", "set 's' ('a b'): unexpected 'b' at position 2"),
        ("a & $b", "set 's' ('a & $b'): unexpected character '$' at position 4"),
        ("a & +", "set 's' ('a & +'): expected a set name after '+' at position 5"),
        ("   ", "set 's' ('   '): the expression is empty"),
        ("a & zz", "set 's': 'zz' is neither a var nor a model id"),
        ("a | +nothing", "set 's' refers to '+nothing', which is not a set"),
    ],
)
def test_syntax_and_name_errors_name_the_set_and_position(expression, message):
    assert error_of(s=expression) == message


def test_reference_cycles_are_refused():
    assert "sets refer to each other in a circle: x -> y -> x" in error_of(x="a & +y", y="b | +x")


def test_subset_semantics_and_precedence():
    compiled = program(s="a & b | c")  # (a & b) | c
    assert compiled.can_run_together(["a", "b"])
    assert compiled.can_run_together(["a"])  # a set allows every subset of itself
    assert not compiled.can_run_together(["a", "c"])
    grouped = program(s="a & (b | c)")
    assert grouped.can_run_together(["a", "c"]) and not grouped.can_run_together(["b", "c"])


def test_references_reuse_other_sets():
    compiled = program(gpu="a | b", both="+gpu & c")
    assert compiled.can_run_together(["b", "c"])
    assert not compiled.can_run_together(["a", "b"])


def test_solver_evicts_the_cheapest_running_models():
    compiled = program(with_b="a & b", with_cd="a & c & d")
    # a wanted while b, c, d run: keeping c and d evicts b (cost 1) rather than c and d (cost 2)
    decision = compiled.solve("a", ["b", "c", "d"], {})
    assert decision.evict == ("b",) and decision.set_name == "with_cd"
    assert set(decision.kept_set) == {"a", "c", "d"}
    # make b dear and the answer flips
    decision = compiled.solve("a", ["b", "c", "d"], {"b": 5})
    assert set(decision.evict) == {"c", "d"} and decision.set_name == "with_b" and decision.cost == 2


def test_equal_costs_go_to_the_set_defined_first():
    compiled = program(first="a & b", second="a & c")
    assert compiled.solve("a", ["b", "c"], {}).set_name == "first"
    compiled = program(second="a & c", first="a & b")
    assert compiled.solve("a", ["b", "c"], {}).set_name == "second"


def test_a_model_in_no_set_runs_alone():
    compiled = program(s="a & b")
    decision = compiled.solve("e", ["a", "b"], {})
    assert set(decision.evict) == {"a", "b"} and decision.kept_set == ("e",) and decision.set_name == ""


def test_nothing_is_evicted_for_a_running_model():
    compiled = program(s="a & b")
    decision = compiled.solve("a", ["a", "b"], {})
    assert decision.evict == () and decision.set_name == "s"


def test_large_products_are_never_expanded():
    # ten groups of twenty alternatives: 20**10 combinations if expanded
    groups = [" | ".join(f"m{group * 20 + item}" for item in range(20)) for group in range(10)]
    compiled = program(big=" & ".join(f"({group})" for group in groups))
    running = [f"m{group * 20}" for group in range(1, 10)]
    decision = compiled.solve("m5", running, {})
    assert decision.evict == () and decision.set_name == "big"
    assert not compiled.can_run_together(["m0", "m1"])  # same group: alternatives

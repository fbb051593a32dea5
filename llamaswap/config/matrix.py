"""
The matrix router's little language: which models may run together.

Each named set is an expression over model ids (or the short names of
C{vars}):

    a & b        a and b together
    a | b        a, or b
    (a | b) & c  parentheses group
    +other       the expression of the set called "other"

A set allows every subset of what it names: naming models together says
they may coexist, not that they all start.  When model X is wanted, the
solver looks at every way each set can be satisfied that includes X, and
keeps the one that evicts the cheapest running models (each costs its
C{evict_costs} entry, 1 by default); equal costs go to the set defined
first.  A model in no set runs alone.

Expressions are never expanded into all their combinations: a query only
cares about the wanted model and the running ones, so each choice is
projected onto those few models (a bit each) and choices that keep a subset
of what another keeps are dropped as they are found.  Ten groups of ten
alternatives stay a small graph instead of ten billion sets.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from attrs import frozen

IDENT = re.compile(r"[\w.\-]+", re.UNICODE)


class MatrixError(ValueError):
    """
    A set's expression cannot be used; the message names the set and says
    where.
    """


# ---------------------------------------------------------------- syntax


class _Node:
    __slots__ = ("kind", "name", "children", "ref")

    def __init__(self, kind: str, name: str = "", children: list[_Node] | None = None):
        self.kind = kind  # "leaf", "ref", "and", "or"
        self.name = name
        self.children = children or []
        self.ref: _Node | None = None


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
        elif char in "&|()":
            tokens.append((char, char, index))
            index += 1
        elif char == "+":
            match = IDENT.match(text, index + 1)
            if match is None:
                raise MatrixError(f"expected a set name after '+' at position {index + 1}")
            tokens.append(("ref", match.group(), index))
            index = match.end()
        else:
            match = IDENT.match(text, index)
            if match is None:
                raise MatrixError(f"unexpected character {char!r} at position {index}")
            tokens.append(("ident", match.group(), index))
            index = match.end()
    tokens.append(("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.position]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.position]
        if token[0] != "end":
            self.position += 1
        return token

    def parse(self) -> _Node:
        root = self.alternatives()
        kind, value, where = self.peek()
        if kind != "end":
            raise MatrixError(f"unexpected {value!r} at position {where}")
        return root

    def alternatives(self) -> _Node:
        children = [self.conjunction()]
        while self.peek()[0] == "|":
            self.take()
            children.append(self.conjunction())
        return children[0] if len(children) == 1 else _Node("or", children=children)

    def conjunction(self) -> _Node:
        children = [self.atom()]
        while self.peek()[0] == "&":
            self.take()
            children.append(self.atom())
        return children[0] if len(children) == 1 else _Node("and", children=children)

    def atom(self) -> _Node:
        kind, value, where = self.take()
        if kind == "ident":
            return _Node("leaf", value)
        if kind == "ref":
            return _Node("ref", value)
        if kind == "(":
            inner = self.alternatives()
            closing, found, at = self.take()
            if closing != ")":
                raise MatrixError(f"missing ')' for the '(' at position {where} (found {found or 'the end'!r} at {at})")
            return inner
        if kind == "end":
            raise MatrixError(f"the expression ends where a model or '(' was expected (position {where})")
        raise MatrixError(f"unexpected {value!r} at position {where}")


def parse(text: str) -> _Node:
    text = text.strip()
    if not text:
        raise MatrixError("the expression is empty")
    return _Parser(text).parse()


def _walk(node: _Node) -> Iterable[_Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


# ---------------------------------------------------------------- program


@frozen
class Decision:
    """
    What the solver decided for a wanted model: which running models to
    stop, and the set (and the models of it that were chosen) that allowed it.
    """

    evict: tuple[str, ...]
    kept_set: tuple[str, ...]
    set_name: str = ""
    expression: str = ""
    cost: int = 0


@frozen
class _CompiledSet:
    name: str
    expression: str
    root: _Node
    models: frozenset[str]


class Program:
    """
    The compiled sets, in the order they are tried (definition order, with
    a set's references before it).
    """

    def __init__(self, sets: list[_CompiledSet]):
        self.sets = sets
        self.models = frozenset().union(*(compiled.models for compiled in sets)) if sets else frozenset()

    def solve(self, target: str, running: Iterable[str], costs: dict[str, int]) -> Decision:
        running = list(dict.fromkeys(running))
        if target in running:
            name, expression = self._first_containing(running)
            return Decision((), tuple(sorted(running)), name, expression)
        evaluator = _Evaluator([target, *running])
        target_bit = evaluator.bits[target]
        best = None
        for compiled in self.sets:
            if target not in compiled.models:
                continue
            for mask, witness in evaluator.evaluate(compiled.root):
                if not mask & target_bit:
                    continue
                cost = sum(costs.get(model, 1) for model in running if not mask & evaluator.bits[model])
                if best is None or cost < best[0]:
                    best = (cost, compiled, mask, witness)
        if best is None:
            return Decision(tuple(running), (target,))
        cost, compiled, mask, witness = best
        evict = tuple(model for model in running if not mask & evaluator.bits[model])
        return Decision(evict, tuple(sorted(_flatten(witness))), compiled.name, compiled.expression, cost)

    def can_run_together(self, models: Iterable[str]) -> bool:
        """
        Whether one set allows all of C{models} at once.
        """
        models = list(dict.fromkeys(models))
        if not models:
            return True
        return self._first_containing(models) != ("", "")

    def _first_containing(self, models: list[str]) -> tuple[str, str]:
        evaluator = _Evaluator(models)
        required = evaluator.full
        for compiled in self.sets:
            if not set(models) <= compiled.models:
                continue
            for mask, _ in evaluator.evaluate(compiled.root):
                if mask & required == required:
                    return compiled.name, compiled.expression
        return "", ""


def compile_sets(sets: list[tuple[str, str]], resolve: Callable[[str], str | None]) -> Program:
    """
    Parse, resolve and link the named sets.

    @param resolve: maps a name in an expression to a model id, or C{None}.
    @raise MatrixError: naming the set and the problem.
    """
    if not sets:
        raise MatrixError("the matrix needs at least one set")
    names = {name for name, _ in sets}
    roots: dict[str, _Node] = {}
    expressions: dict[str, str] = {}
    depends: dict[str, list[str]] = {}
    for name, expression in sets:
        try:
            root = parse(expression)
        except MatrixError as error:
            raise MatrixError(f"set '{name}' ({expression!r}): {error}") from None
        references: list[str] = []
        for node in _walk(root):
            if node.kind == "leaf":
                model = resolve(node.name)
                if model is None:
                    raise MatrixError(f"set '{name}': '{node.name}' is neither a var nor a model id")
                node.name = model
            elif node.kind == "ref":
                if node.name not in names:
                    raise MatrixError(f"set '{name}' refers to '+{node.name}', which is not a set")
                if node.name not in references:
                    references.append(node.name)
        roots[name] = root
        expressions[name] = expression
        depends[name] = references
    order = _topological(sets, depends)
    for root in roots.values():
        for node in _walk(root):
            if node.kind == "ref":
                node.ref = roots[node.name]
    memo: dict[int, frozenset[str]] = {}
    compiled = [_CompiledSet(name, expressions[name], roots[name], _models_of(roots[name], memo)) for name in order]
    return Program(compiled)


def _models_of(node: _Node, memo: dict[int, frozenset[str]]) -> frozenset[str]:
    key = id(node)
    if key not in memo:
        if node.kind == "leaf":
            memo[key] = frozenset([node.name])
        elif node.kind == "ref":
            memo[key] = _models_of(node.ref, memo)
        else:
            memo[key] = frozenset().union(*(_models_of(child, memo) for child in node.children))
    return memo[key]


def _topological(sets: list[tuple[str, str]], depends: dict[str, list[str]]) -> list[str]:
    state: dict[str, int] = {}
    order: list[str] = []

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 1:
            cycle = " -> ".join([*trail[trail.index(name):], name])
            raise MatrixError(f"sets refer to each other in a circle: {cycle}")
        if state.get(name) == 2:
            return
        state[name] = 1
        for dependency in depends[name]:
            visit(dependency, [*trail, name])
        state[name] = 2
        order.append(name)

    for name, _ in sets:
        visit(name, [])
    return order


# ---------------------------------------------------------------- evaluation


class _Witness:
    __slots__ = ("model", "left", "right")

    def __init__(self, model: str = "", left: _Witness | None = None, right: _Witness | None = None):
        self.model = model
        self.left = left
        self.right = right


def _flatten(witness: _Witness | None) -> set[str]:
    models: set[str] = set()
    stack = [witness]
    while stack:
        current = stack.pop()
        if current is None:
            continue
        if current.model:
            models.add(current.model)
        stack.extend((current.left, current.right))
    return models


class _Evaluator:
    """
    Projects the choices of expressions onto the models one query cares
    about: each relevant model is a bit of an integer mask.
    """

    def __init__(self, relevant: list[str]):
        self.bits: dict[str, int] = {}
        for model in relevant:
            self.bits.setdefault(model, 1 << len(self.bits))
        self.full = (1 << len(self.bits)) - 1
        self._memo: dict[int, list[tuple[int, _Witness | None]]] = {}

    def evaluate(self, node: _Node) -> list[tuple[int, _Witness | None]]:
        key = id(node)
        if key in self._memo:
            return self._memo[key]
        if node.kind == "leaf":
            states = [(self.bits.get(node.name, 0), _Witness(node.name))]
        elif node.kind == "ref":
            states = self.evaluate(node.ref)
        elif node.kind == "or":
            states = []
            for child in node.children:
                for state in self.evaluate(child):
                    states = _add(states, state)
        else:
            states = [(0, None)]
            for child in node.children:
                combined: list[tuple[int, _Witness | None]] = []
                for left_mask, left_witness in states:
                    for right_mask, right_witness in self.evaluate(child):
                        combined = _add(combined, (left_mask | right_mask, _Witness("", left_witness, right_witness)))
                states = combined
        self._memo[key] = states
        return states


def _add(states: list[tuple[int, _Witness | None]], candidate: tuple[int, _Witness | None]) -> list:
    """
    Keep only choices that are not subsets of another: with positive
    eviction costs, keeping more of what runs is never worse.
    """
    mask = candidate[0]
    for kept, _ in states:
        if mask & kept == mask:
            return states
    return [state for state in states if state[0] & mask != state[0]] + [candidate]

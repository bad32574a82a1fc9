"""calculator: exact arithmetic on a safe subset of Python expressions (never `eval`)."""

from __future__ import annotations

import ast
import operator
from typing import Annotated

from langchain_core.tools import tool
from pydantic import Field

MAX_EXPRESSION = 120
MAX_DEPTH = 24
MAX_EXPONENT = 1000
MAX_BITS = 4096  # results (and operands of ** and *) beyond this are refused

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    pass


def _check_size(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise CalculatorError("the result is too large")
    if isinstance(value, float) and value != value:
        raise CalculatorError("the result is not a number")
    return value


def _eval(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise CalculatorError("the expression is nested too deeply")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _eval(node.left, depth + 1)
        right = _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise CalculatorError(f"exponents above {MAX_EXPONENT} are refused")
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if left.bit_length() * right > MAX_BITS:
                    raise CalculatorError("the result is too large")
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
    raise CalculatorError(
        f"'{type(node).__name__}' is not allowed: only numbers and + - * / // % **"
    )


def evaluate(expression: str) -> int | float:
    """Evaluate `expression` or raise CalculatorError; the syntax tree is walked, never run."""
    if len(expression) > MAX_EXPRESSION:
        raise CalculatorError(f"expressions are limited to {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None
    return _eval(tree, 0)


def format_number(value: int | float) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


@tool
def calculator(
    expression: Annotated[
        str,
        Field(
            description="Arithmetic with numbers, parentheses and + - * / // % **, e.g. '17 * 23 + 4'",
            max_length=80,
            pattern=r"^[0-9+*/%(). -]{1,80}$",
        ),
    ],
) -> str:
    """Evaluate an arithmetic expression exactly and return the number."""
    return format_number(evaluate(expression))

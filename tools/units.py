"""Unit conversion for length, mass, volume, time and temperature."""

from __future__ import annotations

from typing import Annotated, Literal

from langchain_core.tools import tool
from pydantic import Field

# Factors to the base unit of each dimension (metre, kilogram, litre, second).
_FACTORS = {
    "length": {
        "mm": 0.001,
        "cm": 0.01,
        "m": 1.0,
        "km": 1000.0,
        "in": 0.0254,
        "ft": 0.3048,
        "yd": 0.9144,
        "mi": 1609.344,
    },
    "mass": {"g": 0.001, "kg": 1.0, "t": 1000.0, "oz": 0.028349523125, "lb": 0.45359237},
    "volume": {"ml": 0.001, "l": 1.0, "gal": 3.785411784, "cup": 0.2365882365},
    "time": {"s": 1.0, "min": 60.0, "h": 3600.0, "day": 86400.0, "week": 604800.0},
}
_TEMPERATURE = ("C", "F", "K")
Unit = Literal[
    "mm",
    "cm",
    "m",
    "km",
    "in",
    "ft",
    "yd",
    "mi",
    "g",
    "kg",
    "t",
    "oz",
    "lb",
    "ml",
    "l",
    "gal",
    "cup",
    "s",
    "min",
    "h",
    "day",
    "week",
    "C",
    "F",
    "K",
]


def _to_kelvin(value: float, unit: str) -> float:
    return {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"C": value - 273.15, "F": (value - 273.15) * 9 / 5 + 32, "K": value}[unit]


def convert(value: float, from_unit: str, to_unit: str) -> float:
    if from_unit in _TEMPERATURE and to_unit in _TEMPERATURE:
        return _from_kelvin(_to_kelvin(value, from_unit), to_unit)
    for factors in _FACTORS.values():
        if from_unit in factors and to_unit in factors:
            return value * factors[from_unit] / factors[to_unit]
    raise ValueError(f"cannot convert {from_unit} to {to_unit}: they measure different things")


@tool
def convert_units(
    value: Annotated[float, Field(description="The amount to convert", ge=-1e12, le=1e12)],
    from_unit: Unit,
    to_unit: Unit,
) -> str:
    """Convert an amount between units of length, mass, volume, time or temperature."""
    result = convert(value, from_unit, to_unit)
    return f"{round(result, 6):g} {to_unit}"

"""Search spaces: named parameters mapped to and from the unit cube the model works in.

Floats map linearly, log-scale floats through their logarithm, integers to equal-width bins (so a
uniform draw gives every integer the same chance), and a categorical parameter to one coordinate per
choice, decoded by the largest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from rtopt import Dimension, InvalidEvent
from rtopt.events import ParamValue


def check_dimension(name: str, dim: Dimension) -> None:
    """Raise InvalidEvent (field ``space.<name>``) unless ``dim`` describes a usable range or choice."""
    field = f"space.{name}"
    if dim.type == "categorical":
        if not dim.choices or len(set(map(repr, dim.choices))) != len(dim.choices):
            raise InvalidEvent(
                f"{field}: a categorical parameter needs distinct choices, not {dim.choices!r}",
                field=field,
                value=dim.choices,
            )
        return
    if dim.low is None or dim.high is None or not dim.low < dim.high:
        raise InvalidEvent(
            f"{field} = ({dim.low!r}, {dim.high!r}): a {dim.type} range needs low < high",
            field=field,
            value=(dim.low, dim.high),
        )
    if dim.choices:
        raise InvalidEvent(f"{field}: a {dim.type} range takes no choices", field=field, value=dim.choices)
    if dim.type == "log" and dim.low <= 0:
        raise InvalidEvent(f"{field}: a log-scale range needs low > 0, not {dim.low!r}", field=field, value=dim.low)
    if dim.type == "int" and not (float(dim.low).is_integer() and float(dim.high).is_integer()):
        raise InvalidEvent(
            f"{field} = ({dim.low!r}, {dim.high!r}): integer bounds must be whole numbers",
            field=field,
            value=(dim.low, dim.high),
        )


class Space:
    """The parameters of a study and their unit-cube coordinates.

    >>> from rtopt import Dimension
    >>> space = Space({"temperature": Dimension.of((0.0, 2.0)),
    ...                "max_tokens": Dimension(type="int", low=64, high=1024),
    ...                "model": Dimension(type="categorical", choices=["small", "large"])})
    >>> space.width
    4
    >>> space.decode(space.encode({"temperature": 0.5, "max_tokens": 300, "model": "large"}))
    {'temperature': 0.5, 'max_tokens': 300, 'model': 'large'}
    """

    def __init__(self, dimensions: Mapping[str, Dimension]) -> None:
        for name, dim in dimensions.items():
            check_dimension(name, dim)
        self.dimensions = dict(dimensions)
        self._slices: dict[str, slice] = {}
        start = 0
        for name, dim in self.dimensions.items():
            size = len(dim.choices) if dim.type == "categorical" else 1
            self._slices[name] = slice(start, start + size)
            start += size
        self.width = start

    def encode(self, params: Mapping[str, ParamValue]) -> np.ndarray:
        """The unit-cube point of ``params``."""
        point = np.zeros(self.width)
        for name, dim in self.dimensions.items():
            value, where = params[name], self._slices[name]
            if dim.type == "categorical":
                point[where.start + dim.choices.index(value)] = 1.0
            elif dim.type == "int":
                point[where] = (float(value) - dim.low + 0.5) / (dim.high - dim.low + 1.0)
            elif dim.type == "log":
                point[where] = math.log(float(value) / dim.low) / math.log(dim.high / dim.low)
            else:
                point[where] = (float(value) - dim.low) / (dim.high - dim.low)
        return point

    def decode(self, point: np.ndarray) -> dict[str, ParamValue]:
        """The parameters at unit-cube ``point`` (integers rounded into their bin, the largest choice)."""
        params: dict[str, ParamValue] = {}
        for name, dim in self.dimensions.items():
            where = self._slices[name]
            if dim.type == "categorical":
                params[name] = dim.choices[int(np.argmax(point[where]))]
                continue
            u = min(max(float(point[where][0]), 0.0), 1.0)
            if dim.type == "int":
                params[name] = int(min(dim.low + math.floor(u * (dim.high - dim.low + 1.0)), dim.high))
            elif dim.type == "log":
                params[name] = float(dim.low * math.exp(u * math.log(dim.high / dim.low)))
            else:
                params[name] = float(dim.low + u * (dim.high - dim.low))
        return params

    def snap(self, point: np.ndarray) -> np.ndarray:
        """The unit-cube point of the parameters ``point`` decodes to: what is evaluated there."""
        return self.encode(self.decode(point))

    def neighbours(self, point: np.ndarray) -> list[np.ndarray]:
        """``point`` with one categorical parameter switched to each of its other choices: a relaxed
        optimiser seldom crosses from one choice to another by itself.

        >>> from rtopt import Dimension
        >>> space = Space({"x": Dimension.of((0.0, 1.0)), "m": Dimension(type="categorical", choices=["a", "b", "c"])})
        >>> [space.decode(p)["m"] for p in space.neighbours(space.encode({"x": 0.5, "m": "a"}))]
        ['b', 'c']
        """
        found = []
        for name, dim in self.dimensions.items():
            if dim.type != "categorical":
                continue
            where = self._slices[name]
            current = int(np.argmax(point[where]))
            for choice in range(len(dim.choices)):
                if choice != current:
                    switched = point.copy()
                    switched[where] = 0.0
                    switched[where.start + choice] = 1.0
                    found.append(switched)
        return found

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` uniform unit-cube points, one per row."""
        return rng.random((count, self.width))

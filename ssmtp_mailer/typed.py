"""`NamedTuple`, `Generic` and `TypeVar` for modules on the sendmail path, without `typing`.

The type checker reads typing's own (it takes `TYPE_CHECKING` as true). At run time,
importing `typing` is about 2.5 ms of a sendmail run, and each `typing.NamedTuple` class
another 0.15 ms (it compiles every annotation, a string here, into a ForwardRef). The
stand-ins below build the same `collections.namedtuple` classes in a third of the time, and
give `Generic[T]` and `TypeVar` the one thing run time asks of them: to exist.

Modules import `TYPE_CHECKING` from here as well; `typing` itself is then imported only
under it, for annotations.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Generic as Generic
    from typing import NamedTuple as NamedTuple
    from typing import TypeVar as TypeVar
else:
    # What a class body holds about the class itself rather than attributes for it.
    _OWN = frozenset({"__module__", "__qualname__", "__annotations__", "__classcell__"})

    class _NamedTupleMeta(type):
        def __new__(mcs, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcs, name, bases, namespace)
            if "__annotations__" not in namespace:  # 3.14 defers them unless stringified
                raise TypeError(f"{name}: fields need `from __future__ import annotations`")
            annotations = namespace["__annotations__"]
            fields = tuple(annotations)
            defaults = []
            for field in fields:
                if field in namespace:
                    defaults.append(namespace[field])
                elif defaults:
                    raise TypeError(
                        f"{name}: field {field} has no default but follows one that has"
                    )
            module = namespace.get("__module__")
            cls = collections.namedtuple(name, fields, defaults=defaults, module=module)
            cls.__qualname__ = namespace.get("__qualname__", name)
            cls.__annotations__ = dict(annotations)
            for key, value in namespace.items():
                if key not in _OWN and key not in fields:
                    setattr(cls, key, value)
            cell = namespace.get("__classcell__")
            if cell is not None:  # a method uses super() or __class__
                cell.cell_contents = cls
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        """`class P(NamedTuple): x: int; y: str = ""` makes a collections.namedtuple `P`
        with those fields and defaults, and the body's methods and attributes."""

    class Generic:
        """`class C(Generic[T])` makes a plain class C (typing's subscripting is not needed)."""

        __slots__ = ()

        def __class_getitem__(cls, params):
            return cls

    def TypeVar(name, *constraints, bound=None):
        return name

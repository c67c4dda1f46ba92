"""SQL forms derived from plain Python converters' code, and the values that prove them."""

from transforms.derive.form import Derived, Underived, derive, literals_of

__all__ = ["Derived", "Underived", "derive", "literals_of"]

"""Typed ``key=value,...`` arguments: a config file's variant string and field overrides.

``parse_arg`` reads a config file's argument (``configs/sparse.py:runlocal,V=50,N=2``), with
the keys and their types given by defaults, as big_vision's config files do::

  args = parse_arg(arg, where="configs/sparse.py", runlocal=False, backbone="", V=int)
  args.runlocal, args.backbone, args.V  # False, "", None when not given

A default's type is the value's type: a bool is a switch (``runlocal`` alone is on; a value
is one of ``true/false``, ``1/0``, ``yes/no``, ``on/off``); an int, float or str is
converted; a tuple takes ``:``-separated items of its first item's type (``0.4:0.6``). A type
in place of a default (``V=int``) gives the type and ``None`` when the key is not given. An
unknown key or a value of the wrong type raises ValueError naming the item.

``split_items`` and ``convert`` are the two steps, for a caller with messages of its own
(``experiment.synthetic_config``'s ``data.synthetic_overrides``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import ml_collections as mlc

__all__ = ["TRUE", "FALSE", "Item", "convert", "parse_arg", "split_items"]

TRUE = ("", "1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
_TYPE_WORDS = {
    bool: "a boolean (true or false)",
    int: "an integer",
    float: "a number",
    str: "a string",
}


class Item(NamedTuple):
    """One ``key=value`` of an argument string: ``text`` as written (spaces kept), ``key``
    and ``value`` stripped, ``eq`` whether it has an ``=``."""

    text: str
    key: str
    eq: bool
    value: str


def split_items(arg: str | None) -> list[Item]:
    """``"a=1, b,c=x"`` -> its items, in order; blank items are skipped."""
    out = []
    for text in str(arg or "").split(","):
        if not text.strip():
            continue
        key, eq, value = (x.strip() for x in text.partition("="))
        out.append(Item(text, key, bool(eq), value))
    return out


def convert(value: str, like: Any) -> Any:
    """``value`` (text) as the type of ``like`` (a default value or a type).

    Raises:
      ValueError: ``value`` is not of that type.
    """
    kind = like if isinstance(like, type) else type(like)
    if kind is bool:
        word = value.strip().lower()
        if word in TRUE:
            return True
        if word in FALSE:
            return False
        raise ValueError(f"{value!r} is not a boolean (true or false)")
    if kind is tuple:
        if not like:
            raise ValueError(f"{value!r}: an empty tuple gives no item type")
        return tuple(convert(x, like[0]) for x in value.split(":"))
    return kind(value)


def _type_of(spec: Any) -> type:
    return spec if isinstance(spec, type) else type(spec)


def parse_arg(arg: str | None, *, where: str = "", **spec: Any) -> mlc.ConfigDict:
    """``arg`` (``"a=1,b,c=x"``) as a ``ConfigDict`` of every key of ``spec``: the given
    values typed as ``spec``'s defaults, the others the defaults (``None`` for a type).

    Args:
      arg: the argument string (``None`` or empty: every default).
      where: the messages' prefix (e.g. the config file).
      **spec: key -> default value, or key -> type for a key without a default.

    Raises:
      ValueError: an unknown key (the message lists the known ones), a str key without a
        value, or a value that is not of its key's type; the message names the item.
    """
    prefix = f"{where}: " if where else ""
    out = {k: None if isinstance(v, type) else v for k, v in spec.items()}
    for item in split_items(arg):
        text, key = item.text.strip(), item.key
        if key not in spec:
            raise ValueError(f"{prefix}unknown argument {key!r}; known: {', '.join(spec)}")
        kind = _type_of(spec[key])
        if kind is str and not item.value:
            raise ValueError(f"{prefix}{text}: needs a value ({key}=...)")
        try:
            out[key] = convert(item.value, spec[key])
        except ValueError:
            what = _TYPE_WORDS.get(kind, f"of the type {kind.__name__}")
            if kind is tuple:
                what = "values separated by ':'"
            raise ValueError(f"{prefix}{text}: must be {what}") from None
    return mlc.ConfigDict(out)

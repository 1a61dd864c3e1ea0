"""The debugger data model's basics for dx: Debugger.Sessions, @$cursession, @$curprocess,
@$curthread, @$curstack, their Processes, Threads, Modules and Frames, and the LINQ methods
(Where, Select, OrderBy, OrderByDescending, First, Count, Flatten, Take, Any, All) with
`x => expr` lambdas. Objects are Python dicts of fields (computed when shown), lists are lists.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from kdshell.errors import CommandError

_TOKEN = re.compile(r'\s*(=>|==|!=|<=|>=|&&|\|\||@\$\w+|0x[0-9a-fA-F]+|\d+|"[^"]*"|[A-Za-z_]\w*|[().,\[\]<>+\-*])')


class Obj(dict[str, Any]):
    """A data-model object: its fields in order, and the text dx shows after its name."""

    def __init__(self, display: str, fields: dict[str, Any], key: int | None = None) -> None:
        super().__init__(fields)
        self.display = display
        self.key = key  # the index dx shows in a list ([0x4] for a process: its id)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip():
                raise CommandError(f"dx: unexpected '{text[pos:].strip()}'")
            break
        out.append(m.group(1))
        pos = m.end()
    return out


class Evaluator:
    def __init__(self, roots: dict[str, Callable[[], Any]]) -> None:
        self.roots = roots
        self.toks: list[str] = []
        self.i = 0

    def evaluate(self, text: str) -> Any:
        self.toks, self.i = _tokens(text), 0
        value = self.expr({})
        if self.i < len(self.toks):
            raise CommandError(f"dx: unexpected '{self.toks[self.i]}'")
        return value

    def peek(self) -> str:
        return self.toks[self.i] if self.i < len(self.toks) else ""

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if want is not None and tok != want:
            raise CommandError(f"dx: '{want}' expected" + (f" at '{tok}'" if tok else ""))
        self.i += 1
        return tok

    _PREC = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, ">": 4, "<=": 4, ">=": 4, "+": 5, "-": 5, "*": 6}

    def expr(self, env: dict[str, Any], level: int = 1) -> Any:
        left = self.postfix(env)
        while self.peek() in self._PREC and self._PREC[self.peek()] >= level:
            op = self.take()
            right = self.expr(env, self._PREC[op] + 1)
            left = _binary(op, left, right)
        return left

    def primary(self, env: dict[str, Any]) -> Any:
        tok = self.take()
        if not tok:
            raise CommandError("dx: the expression ends too soon")
        if tok == "(":
            value = self.expr(env)
            self.take(")")
            return value
        if tok.startswith('"'):
            return tok[1:-1]
        if tok[0].isdigit():
            return int(tok, 0)
        if tok == "-":
            return -self.postfix(env)
        if tok in env:
            return env[tok]
        if tok in self.roots:
            return self.roots[tok]()
        raise CommandError(f"dx: Couldn't resolve error at '{tok}'")

    def postfix(self, env: dict[str, Any]) -> Any:
        value = self.primary(env)
        while self.peek() in (".", "["):
            if self.take() == "[":
                index = self.expr(env)
                self.take("]")
                value = _index(value, index)
                continue
            name = self.take()
            if self.peek() == "(":
                self.take("(")
                value = self.method(value, name, env)
            else:
                value = _field(value, name)
        return value

    def method(self, value: Any, name: str, env: dict[str, Any]) -> Any:
        if not isinstance(value, list):
            if name == "ToDisplayString" and self.take(")"):
                return _display(value)
            raise CommandError(f"dx: {name}() is a method of collections")
        if name in ("First", "Count", "Any", "All", "Where", "Select", "OrderBy", "OrderByDescending") \
                and self.peek() != ")":
            fn = self.lambda_(env)
        else:
            fn = None
        if name == "Take":
            n = self.expr(env)
            self.take(")")
            return value[:n]
        self.take(")")
        if name == "Count":
            return len([v for v in value if fn is None or fn(v)])
        if name == "First":
            found = [v for v in value if fn is None or fn(v)]
            if not found:
                raise CommandError("dx: First() found no element")
            return found[0]
        if name == "Any":
            return any(fn(v) if fn else True for v in value)
        if name == "All":
            return all(fn(v) if fn else True for v in value)
        if name == "Where" and fn:
            return [v for v in value if fn(v)]
        if name == "Select" and fn:
            return [fn(v) for v in value]
        if name in ("OrderBy", "OrderByDescending") and fn:
            return sorted(value, key=lambda v: _sort_key(fn(v)), reverse=name == "OrderByDescending")
        if name == "Flatten":
            return [x for v in value for x in (v if isinstance(v, list) else [v])]
        raise CommandError(f"dx: {name}() is not supported (Where, Select, OrderBy, OrderByDescending, "
                           "First, Count, Flatten, Take, Any, All)")

    def lambda_(self, env: dict[str, Any]) -> Callable[[Any], Any]:
        param = self.take()
        self.take("=>")
        start = self.i
        # parse once to find its end, then re-run it for each element
        self.expr({**env, param: _Probe()})
        end = self.i

        def fn(v: Any) -> Any:
            saved = self.i
            self.i = start
            try:
                return self.expr({**env, param: v})
            finally:
                self.i = saved

        self.i = end
        return fn


class _Probe:
    """Stands for a lambda's parameter while its extent is found (every operation gives a probe)."""

    def __getattr__(self, name: str) -> Any:
        return self


def _field(value: Any, name: str) -> Any:
    if isinstance(value, _Probe):
        return value
    if isinstance(value, dict) and name in value:
        field = value[name]
        return field() if callable(field) else field
    raise CommandError(f"dx: Couldn't resolve error at '{name}'")


def _index(value: Any, index: Any) -> Any:
    if isinstance(value, _Probe):
        return value
    if isinstance(value, list):
        for v in value:
            if isinstance(v, Obj) and v.key == index:
                return v
        if isinstance(index, int) and 0 <= index < len(value) and not any(isinstance(v, Obj) and v.key is not None
                                                                        for v in value):
            return value[index]
    raise CommandError(f"dx: no element [{_display(index)}]")


def _binary(op: str, a: Any, b: Any) -> Any:
    if isinstance(a, _Probe) or isinstance(b, _Probe):
        return _Probe()
    a, b = _plain(a), _plain(b)
    if op == "&&":
        return bool(a) and bool(b)
    if op == "||":
        return bool(a) or bool(b)
    try:
        return {"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b, ">": lambda: a > b,
                "<=": lambda: a <= b, ">=": lambda: a >= b, "+": lambda: a + b, "-": lambda: a - b,
                "*": lambda: a * b}[op]()
    except TypeError:
        raise CommandError(f"dx: '{op}' cannot combine these values") from None


def _plain(v: Any) -> Any:
    return v.display if isinstance(v, Obj) else v


def _sort_key(v: Any) -> tuple[int, Any]:
    v = _plain(v)
    return (0, v) if isinstance(v, (int, bool)) else (1, str(v))


def _display(v: Any) -> str:
    if isinstance(v, Obj):
        return v.display
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"0x{v:x}"
    return str(v)


def tree(label: str, value: Any, depth: int, indent: str = "", width: int = 0) -> list[str]:
    """dx's layout: `label : value`, children indented 4 under it (lists by [index])."""
    head = label.ljust(width) if width else label
    if isinstance(value, list):
        lines = [f"{indent}{head}".rstrip()]
        if depth > 0:
            labels = [f"[0x{v.key:x}]" if isinstance(v, Obj) and v.key is not None else f"[{i}]"
                      for i, v in enumerate(value)]
            column = max((len(x) for x in labels), default=0)
            for x, v in zip(labels, value):
                lines += tree(x, v, depth - 1, indent + "    ", max(column, 16))
        return lines
    if isinstance(value, Obj):
        lines = [f"{indent}{head}{' : ' + value.display if value.display else ''}".rstrip()]
        if depth > 0:
            column = max((len(k) for k in value), default=0)
            for k, field in value.items():
                v = field() if callable(field) else field
                lines += tree(k, v, depth - 1, indent + "    ", max(column, 16))
        return lines
    if isinstance(value, str):
        return [f"{indent}{head} : {value}"]
    return [f"{indent}{head} : {_display(value)}"]

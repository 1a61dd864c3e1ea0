"""Fuzz target: the MASM expression evaluator, address ranges and the command-line tokenizer,
against real sessions (symbols, registers, memory).

One input is text (UTF-8, invalid bytes replaced; at most 400 characters). Each input is:
1. evaluated (Evaluator.evaluate) and parsed as a range (parse_range, 1- and 8-byte units) on
   a session picked by the input's hash: the bundled sample (a small dump with its symbols) or
   a reduced kernel dump of the test machine d1 (paging, KDBG, processes);
2. split and tokenized as a command line (split_commands, tokenize, resolve);
3. given to a command that takes an expression (for `x`, a symbol pattern) -- `?`, `??`, `uf`,
   `ln`, `x`, `.formats`, `dt nt!_KTHREAD`, `r $t0 =`, `!pte`, `!vtop`, and `dq`/`db`/`u`/`ub`/`dps` at `@$t0` after
   `r $t0 = text` -- through the dispatcher. `;` is removed from the text and `L?` (a huge
   length the user asks for on purpose) is cut, so the text stays one expression.
An ExprError/CommandError/MemoryNotPresent (a KdError) is a clean answer; an internal error is
a bug, and so is an input slower than TIMEOUT (engine.Hang). Seeds: expressions in WinDbg's
syntax, valid and not, and wildcards that would backtrack in a regex.
"""
from __future__ import annotations

import hashlib
import re

from fuzz import seeds as _seeds
from fuzz.engine import shape

NAME = "expressions"
TIMEOUT = 10.0
MAX_TEXT = 400

SEED_TEXTS = [
    "10", "0x10", "0n10", "0t17", "0y1010", "fffff800`00000000", "add", "-1", "1+2*3", "(1+2)*3", "[1+2]*3",
    "2*3 == 6", "1 < 2 and 3", "6 & 3 | 8", "1 << 4 + 1", "-8 >>> 1", "7 / 0", "7 % 0", "7 mod 4", "not 0",
    "hi 12345678", "low 12345678", "by @rsp", "wo @rsp", "dwo @rsp", "qwo @rsp", "poi(@rsp)", "poi(poi(@rsp+8))",
    "@rax", "rax", "eax", "al", "@$ip", "$ip", "@$csp", "$t0", "$t19", "$t20", "$ptrsize", "$pagesize", "$exp",
    "$proc", "$thread", "$prcb", "nt!KeBugCheckEx", "nt!KeBugCheckEx+0x10", "mydrv!MyDrvReadRegister",
    "mydrv!MyDrvReadRegister+5-2", "nt", "mydrv", "kdshell!nothing", "nt!Ke*", "$vvalid(@rsp, 8)",
    "$vvalid(0, ffffffff`ffffffff)", "@rsp L4", "@rsp L?4", "rsp rsp+10", "L4", "@rip L-1", "0 ffffffff`ffffffff",
    "((((((((((((((((1))))))))))))))))", "(" * 200 + "1" + ")" * 200, "1 +", "poi(", "@", "@@", "0x", "0n",
    "ffffffff`ffffffff`ffffffff", "1`2`3", "' '", "\"abc\"", "nt!", "!KeBugCheckEx", "nt!KeBugCheckEx L10",
    "@rsp L10000000", "@rsp L?10000000", "-0x8000000000000000 / -1", "1 / -1", "0n18446744073709551616",
    "nt!*a*a*a*a*a*a*a*a*a*a*a*a*b", "*!*?*?*?*?*?*?*?*?*?*?*?*?*?*z",
]

_SESSIONS: dict[str, object] = {}


def seeds() -> list[tuple[str, bytes]]:
    return [(f"expr-{i}", t.encode()) for i, t in enumerate(SEED_TEXTS)]


def _session(which: int):
    key = "sample" if which % 2 == 0 else "kernel"
    s = _SESSIONS.get(key)
    if s is None:
        import kdshell
        from kdshell.cli import bundled_sample

        store = str(_seeds.SAMPLE_STORE)
        if key == "sample":
            path = bundled_sample()[0]
        else:
            from fuzz.engine import tmp_dir

            data = dict(_seeds.machine_dumps())["machine-d1-reduced-bitmap6.dmp"]
            path = tmp_dir() / "d1-reduced.dmp"
            path.write_bytes(data)
        s = kdshell.open(str(path), symbol_path=store, image_path=store)
        s.progress = None
        _SESSIONS[key] = s
    return s


class InternalError(Exception):
    def __init__(self, command: str, message: str, trace: str):
        super().__init__(f"{command!r}: {message}")
        self.trace = trace


# Commands that take the text as an expression; the memory commands get it through $t0, so a
# second address in the text cannot turn into a range of a million lines the user asked for.
COMMANDS = ("? {}", "ln {}", ".formats {}", "dt nt!_KTHREAD {}", "r $t0 = {}", "!pte {}", "!vtop 0 {}",
            "r $t0 = {}; dq @$t0 L4", "r $t0 = {}; db @$t0 L10", "r $t0 = {}; u @$t0 L2", "r $t0 = {}; ub @$t0 L2",
            "r $t0 = {}; dps @$t0 L2", "?? {}", "uf {}", "x {}")


def one_input(data: bytes) -> None:
    from kdshell import dispatch
    from kdshell.errors import KdError
    from kdshell.expr import Evaluator

    text = data.decode("utf-8", "replace")[:MAX_TEXT]
    h = hashlib.sha1(data).digest()
    s = _session(h[0])
    outcome = []
    for attempt in (lambda: Evaluator(s).evaluate(text), lambda: Evaluator(s).parse_range(text, 1),
                    lambda: Evaluator(s).parse_range(text, 8, allow_end=False)):
        try:
            value = attempt()
        except KdError as exc:
            outcome.append(shape(exc))
            continue
        outcome.append("ok")
        if isinstance(value, int) and not 0 <= value < 1 << 64:
            raise AssertionError(f"expression value out of 64 bits: {value}")
    for part in dispatch.split_commands(text):
        try:
            dispatch.tokenize(part)
            dispatch.resolve(part)
        except KdError:
            pass
    one = re.sub(r"[lL]\s*\?", "", text.replace(";", " ")).replace("\n", " ").replace("\r", " ")
    template = COMMANDS[h[1] % len(COMMANDS)]
    line = template.format(one)
    s.last_traceback = None
    failures = s.failures
    s.capture(line)
    if s.last_traceback:
        raise InternalError(line, s.last_error or "", s.last_traceback)
    outcome.append(template.split(";")[-1].split()[0] + (":failed" if s.failures > failures else ":ok"))
    return "|".join(outcome)

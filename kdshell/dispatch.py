"""The command registry and WinDbg's command-line syntax.

Commands register with the `command` decorator (names, family, syntax, a one-line summary, an
example). A line is split on ';' (outside quotes), each command is resolved to a registered
one, and its arguments are tokenized the WinDbg way (not argparse: it cannot say `L4` or `/c`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from kdshell.errors import CommandError, KdError


@dataclass
class Invocation:
    """What a command receives: the name as typed, glued option letters, the raw rest, tokens."""

    name: str
    suffix: str
    text: str
    args: list[str] = field(default_factory=list)


# A command: `func(session, invocation)`, printing through session.out.
CommandFunc = Callable[[Any, Invocation], None]


@dataclass
class Command:
    names: tuple[str, ...]
    func: CommandFunc
    family: str
    syntax: str
    summary: str
    example: str = ""
    option_suffix: bool = False  # letters glued to the name are options (`lmvm`, `kbn`)
    needs: tuple[Callable[[Any], None], ...] = ()
    details: str = ""

    @property
    def name(self) -> str:
        return self.names[0]


REGISTRY: dict[str, Command] = {}
FAMILIES = {
    "target": "What the dump is: kind, OS, bug check, header fields",
    "memory": "Reading memory: d*, s, !pte, !vtop, u, r",
    "symbols": "Modules and symbols: lm, x, ln, dt, .sympath, .reload",
    "stack": "Call stacks and register contexts: k*, .cxr, .trap, .frame",
    "kernel": "Processes, threads, processors: !process, !thread, !pcr",
    "analysis": "Crash analysis: !analyze, !error, !verifier",
    "machine": "Machine facts and hardware errors: !sysinfo, !cpuinfo, !errrec, !whea",
    "dump": "Writing dumps: .dump",
    "session": "The session itself: .help, .echo, q, options",
}


def command(
    *names: str,
    family: str,
    syntax: str,
    summary: str,
    example: str = "",
    option_suffix: bool = False,
    needs: tuple[Callable[[Any], None], ...] = (),
    details: str = "",
) -> Callable[[CommandFunc], CommandFunc]:
    """Register a command function `func(session, invocation)` under one or more names."""
    if family not in FAMILIES:
        raise ValueError(f"unknown command family {family!r}")

    def register(func: CommandFunc) -> CommandFunc:
        cmd = Command(tuple(names), func, family, syntax, summary, example, option_suffix, needs, details)
        for n in names:
            if n.lower() in REGISTRY:
                raise ValueError(f"command {n!r} registered twice")
            REGISTRY[n.lower()] = cmd
        return func

    return register


# Script commands: `$<`/`$><` take the rest of the line (';' included) as the file name; the `$$`
# forms end at ';' like any command (windbg.md §17).
SCRIPT_PREFIXES = ("$$>a<", "$$><", "$$<", "$><", "$<")


_NON_BLANK = re.compile(r"\S")
_QUOTE_OR_SEMI = re.compile('[;"{}()]')


def split_commands(line: str) -> list[str]:
    """Split on ';' outside double quotes and `{ }` blocks (a control token's blocks stay whole).

    `$$` starts a comment that runs to the next ';'; `*` at the start of a command comments out
    the rest of the line; `$<File` and `$><File` take the rest of the line as the file name,
    `as Name Text` and `j Condition Cmd1 ; Cmd2` the rest of the line as their text.
    """
    # Linear in the line's length (issue 24): the regular expressions skip ordinary text, and a
    # command's first non-blank character is where `$<` and `*` are looked for.
    parts: list[str] = []
    n = len(line)
    start = i = 0  # the current command starts at `start`; scanned up to `i`
    at_start = True  # nothing but whitespace yet in the current command
    depth = 0  # inside `{ }` (or the parentheses of `.for (Init; Condition; Increment)`)
    in_for = False
    while i < n:
        if at_start:
            first = _NON_BLANK.search(line, i)
            if first is None:
                break
            j = first.start()
            if line.startswith(("$<", "$><", "as ", "as\t", "j ", "j\t", "j("), j):
                parts.append(line[j:])
                start = n
                break
            if line[j] == "*":
                start = n
                break
            at_start, i = False, j
            in_for = line.startswith(".for", j) and not line.startswith(".foreach", j)
        m = _QUOTE_OR_SEMI.search(line, i)
        if m is None:
            break
        i = m.end()
        if m.group() == '"':  # a ';' inside quotes is text: skip to the closing quote
            close = line.find('"', i)
            if close < 0:
                break
            i = close + 1
        elif m.group() in "()":
            if in_for:
                depth = depth + 1 if m.group() == "(" else max(0, depth - 1)
        elif m.group() == "{":
            depth += 1
        elif m.group() == "}":
            depth = max(0, depth - 1)
        elif depth == 0:
            parts.append(line[start:m.start()])
            start, at_start = i, True
    parts.append(line[start:])
    out = []
    for p in parts:
        p = p.strip()
        if not p or (p.startswith("$$") and not p.startswith(("$$<", "$$>"))):
            continue
        out.append(p)
    return out


def tokenize(text: str) -> list[str]:
    """Whitespace-separated tokens; "quoted strings" and (parenthesised expressions) stay whole."""
    tokens, cur, depth, quoted = [], [], 0, False
    for ch in text:
        if quoted:
            if ch == '"':
                quoted = False
            else:
                cur.append(ch)
            continue
        if ch == '"':
            quoted = True
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]" and depth:
            depth -= 1
        if ch.isspace() and depth == 0:
            if cur:
                tokens.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if quoted:
        raise CommandError("missing closing quote")
    if cur:
        tokens.append("".join(cur))
    return tokens


def resolve(text: str) -> tuple[Command, Invocation]:
    """Find the registered command for one command's text."""
    text = text.strip()
    for prefix in SCRIPT_PREFIXES:
        if text.startswith(prefix) and prefix.lower() in REGISTRY:
            rest = text[len(prefix):].strip()
            return REGISTRY[prefix.lower()], Invocation(prefix, "", rest, tokenize(rest))
    if text.startswith("?"):
        name = "??" if text.startswith("??") else "?"
        rest = text[len(name):].strip()
        cmd = REGISTRY.get(name)
        if cmd is None:
            raise CommandError(f"^ Syntax error in '{text}'")
        return cmd, Invocation(name, "", rest, tokenize(rest))
    word, _, rest = text.partition(" ")
    if "\t" in word:
        word, _, more = word.partition("\t")
        rest = more + " " + rest
    rest = rest.strip()
    cmd = REGISTRY.get(word.lower())
    if cmd is not None:
        return cmd, Invocation(word, "", rest, tokenize(rest))
    # Glued option letters: the longest registered name with option_suffix that prefixes the word.
    for n in range(len(word) - 1, 0, -1):
        cmd = REGISTRY.get(word[:n].lower())
        if cmd is not None and cmd.option_suffix:
            return cmd, Invocation(word[:n], word[n:], rest, tokenize(rest))
    hint = did_you_mean(word, rest)
    if word.startswith("!"):
        raise CommandError(f"No export {word[1:]} found" + (f". {hint}" if hint else
                                                             " (type .help for the extensions kdshell knows)"))
    raise CommandError(f"^ Syntax error in '{text}': no such command" + (f". {hint}" if hint else
                                                                          " (type .help for the list)"))


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): insertions, deletions,
    substitutions and swaps of two neighbours each cost 1."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def closest_command(word: str) -> str | None:
    """The registered command (or extension) nearest to a mistyped name: within 2 edits for
    names over 4 characters (not counting a leading '!' or '.'), 1 otherwise; ties go to a name
    the word starts with (`kk` -> `k`), then to the nearest length. None for one-character
    words (every letter is a command)."""
    word = word.lower()
    if len(word) < 2:
        return None
    limit = 2 if len(word.lstrip("!.")) > 4 else 1
    best = None
    for name in REGISTRY:
        d = edit_distance(word, name)
        if d <= limit:
            rank = (d, not word.startswith(name), abs(len(word) - len(name)), name)
            best = min(best, rank) if best is not None else rank
    return best[-1] if best is not None else None


def did_you_mean(word: str, rest: str = "") -> str | None:
    """ "Did you mean '!analyze -v'?" for a mistyped command name (its arguments kept), or None."""
    name = closest_command(word)
    if name is None:
        return None
    return f"Did you mean '{f'{name} {rest}'.strip()}'?"


def commands_by_family() -> dict[str, list[Command]]:
    seen: dict[str, list[Command]] = {f: [] for f in FAMILIES}
    done = set()
    for cmd in REGISTRY.values():
        if id(cmd) not in done:
            done.add(id(cmd))
            seen[cmd.family].append(cmd)
    for cmds in seen.values():
        cmds.sort(key=lambda c: c.name.lstrip(".!").lower())
    return seen


def help_lines(cmd: Command) -> list[str]:
    """`.help CMD` and `CMD /?`: syntax, what it does, an example."""
    lines = [f"{cmd.syntax}", f"  {cmd.summary}"]
    if len(cmd.names) > 1:
        lines.append(f"  Also: {', '.join(cmd.names[1:])}")
    if cmd.details:
        lines += ["  " + line for line in cmd.details.strip().splitlines()]
    if cmd.example:
        lines.append(f"  Example: {cmd.example}")
    return lines


def load_commands() -> None:
    """Register every command family. The families (kdshell.commands) sit above the engine and
    register themselves with this registry when imported, as plug-ins do: the engine names them
    only here, by string, and never imports them."""
    if not REGISTRY:
        import importlib

        importlib.import_module("kdshell.commands")


# -- guards: a command's `needs`, checked before it runs -----------------------------------------
def needs_memory(session: Any) -> None:
    if session.memory is None:
        raise KdError("Memory is not available in this dump (no page tables or saved ranges kdshell can read)")


def needs_physical(session: Any) -> None:
    if session.physical_memory is None:
        raise KdError("Physical memory is not available in this dump (a small memory dump keeps none)")


def not_on_arm64(name: str, why: str) -> Callable[[Any], None]:
    """For a command whose facts ARM64 does not have (x86 CPUID, say): one line saying so
    instead of x64 nonsense."""
    from kdshell.dumpfile.header import MACHINE_ARM64

    def guard(session: Any) -> None:
        if session.dump.header.machine == MACHINE_ARM64:
            raise KdError(f"{name} does not apply to ARM64 dumps ({why})")

    return guard


def has_command(name: str) -> bool:
    """Whether `name` runs a registered command (`lmvm` is `lm` with options)."""
    try:
        resolve(name)
        return True
    except CommandError:
        return False

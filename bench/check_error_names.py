"""Check kdshell/data/errors.tsv against the public headers (ntstatus.h, winerror.h).

    python bench/check_error_names.py path/to/ntstatus.h path/to/winerror.h

The headers are not part of kdshell: take them from any public copy (mingw-w64's
mingw-w64-headers/include, Wine's include/). Prints one line per table row whose name is not in
the headers or whose number differs from the headers', with the header names that carry the
row's number, and exits 1 if there was any.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "kdshell" / "data" / "errors.tsv"

# `#define NAME <value>` where value is a number, possibly wrapped: ((NTSTATUS)0xC0000005L),
# __MSABI_LONG(2), 2L, _HRESULT_TYPEDEF_(0x80070057L), ((HRESULT)0x00000000L)
DEFINE = re.compile(r"^\s*#\s*define\s+([A-Za-z_][A-Za-z0-9_]*)\s+(.+?)\s*(?:/[/*].*)?$")
NUMBER = re.compile(r"^[(\s]*(?:\(\s*(?:NTSTATUS|HRESULT|DWORD|LONG|SCODE)\s*\)\s*|"
                    r"(?:__MSABI_LONG|_HRESULT_TYPEDEF_|_NDIS_ERROR_TYPEDEF_)\s*\(\s*)*"
                    r"(-?(?:0[xX][0-9A-Fa-f]+|\d+))[uUlL]*[)\s]*$")
ALIAS = re.compile(r"^\(?([A-Za-z_][A-Za-z0-9_]*)\)?$")


def parse_header(text: str) -> dict[str, int]:
    """Every `#define NAME number` (and `#define NAME OTHER_NAME` for a known OTHER_NAME)."""
    values: dict[str, int] = {}
    aliases: dict[str, str] = {}
    for line in text.splitlines():
        m = DEFINE.match(line)
        if not m:
            continue
        name, body = m.groups()
        num = NUMBER.match(body)
        if num:
            values.setdefault(name, int(num.group(1), 0) & 0xFFFFFFFF)
        elif (alias := ALIAS.match(body)):
            aliases.setdefault(name, alias.group(1))
    for name, target in aliases.items():
        if target in values:
            values.setdefault(name, values[target])
    return values


def read_table(path: Path = TABLE) -> list[tuple[int, str, int, str]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line and not line.startswith("#"):
            kind, code, name, _words = line.split("\t")
            rows.append((number, kind, int(code, 16), name))
    return rows


def check(rows: list[tuple[int, str, int, str]], ntstatus: dict[str, int],
          winerror: dict[str, int]) -> list[str]:
    problems = []
    for line, kind, code, name in rows:
        source = ntstatus if kind == "ntstatus" else winerror
        if kind == "win32":  # Win32 codes are the small numbers; HRESULTs the rest
            pool = {n: v for n, v in source.items() if v < 0x10000}
        elif kind == "hresult":
            pool = {n: v for n, v in source.items() if v >= 0x10000 or n in ("S_OK", "S_FALSE")}
        else:
            pool = source
        same = sorted(n for n, v in pool.items() if v == code)[:4]
        small = code < 0x10000 and name not in ("S_OK", "S_FALSE")
        wrong_size = not small if kind == "win32" else small
        if kind != "ntstatus" and wrong_size:
            problems.append(f"{line}: {kind} {code:#010x} {name}: not a number of this kind")
        if name not in source:
            problems.append(f"{line}: {kind} {code:#010x} {name}: name not in the headers; "
                            f"headers' names for this number: {same}")
        elif source[name] != code:
            problems.append(f"{line}: {kind} {code:#010x} {name}: headers say {source[name]:#010x}; "
                            f"headers' names for this number: {same}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    ntstatus = parse_header(Path(argv[1]).read_text(encoding="utf-8", errors="replace"))
    winerror = parse_header(Path(argv[2]).read_text(encoding="utf-8", errors="replace"))
    rows = read_table()
    problems = check(rows, ntstatus, winerror)
    for p in problems:
        print(p)
    print(f"{len(rows)} rows, {len(problems)} problems "
          f"({len(ntstatus)} names in ntstatus.h, {len(winerror)} in winerror.h)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

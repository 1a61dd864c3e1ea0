"""WinDbg's debugger command programs: control flow tokens, aliases, .printf, automatic
pseudo-registers (flow, text, printf, pseudo) and the `dx` data model (dx)."""

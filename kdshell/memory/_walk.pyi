from typing import Callable, Sequence

from array import array

class Translator:
    """Paging.translate's common cases over Paging's own caches (kdshell/memory/_walk.c)."""

    def __init__(self, *, tlb: dict[int, int], leaves: dict[int, array], tables: dict[int, array],
                 slow: Callable[[int], int], top: int, levels: Sequence[tuple[int, int, int, int, int]],
                 table_mask: int, entry_size: int, leaf_key_shift: int, canon_shift: int, canon_top: int,
                 tlb_limit: int, leaves_limit: int) -> None: ...
    def __call__(self, va: int) -> int: ...

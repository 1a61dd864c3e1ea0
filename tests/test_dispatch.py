import time

import pytest

from kdshell import dispatch
from kdshell.errors import CommandError
from kdshell.dispatch import load_commands as _load_commands


def test_split_commands_respects_quotes_and_comments():
    assert dispatch.split_commands('a; b "c;d" ;; $$ x; e') == ["a", 'b "c;d"', "e"]


def test_split_commands_comments_and_file_commands():
    assert dispatch.split_commands("r;  * rest; not run") == ["r"]
    assert dispatch.split_commands('k; $<my;file.txt') == ["k", "$<my;file.txt"]
    assert dispatch.split_commands('  $><a b;c') == ["$><a b;c"]
    assert dispatch.split_commands('.echo "*;$<"; x*y') == ['.echo "*;$<"', "x*y"]
    assert dispatch.split_commands('.echo "open;') == ['.echo "open;']


def test_split_commands_is_linear():
    """Issue 24: joining the buffer at every character made a 1 MB line take hours. A complexity
    check with a generous bound, not a benchmark."""
    lines = [
        ('.echo "a;b" ' + "x" * 1000 + "; ") * 10_000,  # 10 MB: 10,000 commands with quotes
        "?" + " 1" * 5_000_000,  # one 10 MB command
        " " * 10_000_000 + "r",  # 10 MB of blanks before a command
        '.echo "' + "a;" * 5_000_000,  # an unclosed quote over 10 MB
    ]
    expected = [10_000, 1, 1, 1]
    for line, count in zip(lines, expected):
        start = time.perf_counter()
        parts = dispatch.split_commands(line)
        assert time.perf_counter() - start < 1.0
        assert len(parts) == count


def test_tokenize_keeps_quotes_and_parentheses():
    assert dispatch.tokenize('dq poi(rsp + 8) L4 "a b"') == ["dq", "poi(rsp + 8)", "L4", "a b"]
    with pytest.raises(CommandError, match="quote"):
        dispatch.tokenize('"open')


def test_resolve_exact_and_unknown():
    _load_commands()
    cmd, inv = dispatch.resolve("vertarget")
    assert cmd.name == "vertarget" and inv.args == []
    cmd, inv = dispatch.resolve(".ignore_missing_pages 1")
    assert inv.args == ["1"]
    with pytest.raises(CommandError, match="Syntax error"):
        dispatch.resolve("zzz 1")


def test_option_suffix_resolution():
    @dispatch.command("zq_test", family="session", syntax="zq_test", summary="test", option_suffix=True)
    def _zq(session, inv):
        pass

    try:
        cmd, inv = dispatch.resolve("zq_testvm arg")
        assert cmd.name == "zq_test" and inv.suffix == "vm" and inv.args == ["arg"]
    finally:
        del dispatch.REGISTRY["zq_test"]


def test_edit_distance_counts_a_swap_as_one():
    assert dispatch.edit_distance("analyse", "analyze") == 1
    assert dispatch.edit_distance("vertraget", "vertarget") == 1  # two neighbours swapped
    assert dispatch.edit_distance("kk", "k") == 1
    assert dispatch.edit_distance("", "lm") == 2 and dispatch.edit_distance("lm", "lm") == 0


@pytest.mark.parametrize("typed, message", [
    ("!analyse -v", "No export analyse found. Did you mean '!analyze -v'?"),
    ("!proces 0 0", "No export proces found. Did you mean '!process 0 0'?"),
    ("analyze -v", "^ Syntax error in 'analyze -v': no such command. Did you mean '!analyze -v'?"),
    ("vertraget", "^ Syntax error in 'vertraget': no such command. Did you mean 'vertarget'?"),
    (".symfx", "^ Syntax error in '.symfx': no such command. Did you mean '.symfix'?"),
    # nothing close: the old wording, no guess
    ("frobnicate", "^ Syntax error in 'frobnicate': no such command (type .help for the list)"),
    ("!frob", "No export frob found (type .help for the extensions kdshell knows)"),
])
def test_unknown_commands_suggest_the_nearest_name(typed, message):
    _load_commands()
    with pytest.raises(CommandError) as err:
        dispatch.resolve(typed)
    assert str(err.value) == message


def test_suggestions_stay_close():
    _load_commands()
    # short names allow one edit, longer ones two; a one-letter word matches every one-letter command
    assert dispatch.closest_command("kk") == "k"  # the name the word starts with wins a tie (kd)
    assert dispatch.closest_command("lmx") == "lm"
    assert dispatch.closest_command("!frob") is None  # '!prcb' is two edits away, and 'frob' is short
    assert dispatch.closest_command("vrtrgt") is None  # three edits from vertarget
    assert dispatch.closest_command("g") is None

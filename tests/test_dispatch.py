import pytest

from kdshell import dispatch
from kdshell.errors import CommandError
from kdshell.dispatch import load_commands as _load_commands


def test_split_commands_respects_quotes_and_comments():
    assert dispatch.split_commands('a; b "c;d" ;; $$ x; e') == ["a", 'b "c;d"', "e"]


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

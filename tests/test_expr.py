"""MASM expressions: numbers, radix, registers, pseudo-registers, memory operators, precedence,
ranges and WinDbg's error messages."""
import pytest

import kdshell
from conftest import TRIAGE_19041
from kdshell.errors import MemoryNotPresent
from kdshell.expr import Evaluator, ExprError, Registers


class FakeMemory:
    pointer_size = 8

    def __init__(self, data: dict[int, bytes]):
        self.data = data

    def read(self, address, size):
        for base, blob in self.data.items():
            if base <= address and address + size <= base + len(blob):
                return blob[address - base : address - base + size]
        raise MemoryNotPresent(address, "not saved")

    def readable(self, address, size=1):
        try:
            self.read(address, size)
            return True
        except MemoryNotPresent:
            return False


class FakeSession:
    def __init__(self, is64=True, symbols=None):
        self.is64 = is64
        self.radix = 16
        self.kernel = None
        self.registers = {"rax": 0x1122334455667788, "rbx": 0, "rcx": 0x10, "rsp": 0xFFFF850429892120,
                          "rip": 0xFFFFF8048B58334C, "efl": 0x246, "r8": 8} if is64 else \
            {"eax": 0x11223344, "esp": 0x8B3F1F00, "eip": 0x82A1C4D0, "edx": 2, "efl": 0x246}
        self.pseudo_registers = {}
        self.memory = FakeMemory({0xFFFF850429892120: (0x1000).to_bytes(8, "little") + bytes(range(8)),
                                  0x1000: b"\xef\xbe\xad\xde\x78\x56\x34\x12"})
        self.symbols = symbols or {}

    def resolve_symbol(self, name):
        return self.symbols.get(name.lower())


def ev(text, **kw):
    return Evaluator(FakeSession(**kw)).evaluate(text)


@pytest.mark.parametrize("text, value", [
    ("10", 0x10), ("0x10", 0x10), ("0n10", 10), ("0t17", 15), ("0o17", 15), ("0y1010", 10),
    ("fffff804`7ba00000", 0xFFFFF8047BA00000), ("add", 0xADD), ("0n-5", None),
    ("-1", 0xFFFF_FFFF_FFFF_FFFF), ("1+2*3", 7), ("(1+2)*3", 9), ("[1+2]*3", 9), ("10-4-2", 0xA),
    ("2*3 == 6", 1), ("1 < 2 and 3", 1), ("6 & 3 | 8", 0xA), ("1 | 2 ^ 3", 1), ("1 << 4 + 1", 0x20),
    ("-8 >>> 1", 0xFFFF_FFFF_FFFF_FFFC), ("-8 >> 3c", 0xF), ("7 / 2", 3), ("-7 / 2", (-3) & (2**64 - 1)),
    ("7 % 4", 3), ("7 mod 4", 3), ("-1 < 0", 1), ("not 0", 1), ("not 5", 0), ("hi 12345678", 0x1234),
    ("low 12345678", 0x5678), ("3 = 3", 1), ("3 != 3", 0), ("5 >= 5", 1), ("4 <= 3", 0), ("1 xor 3", 2),
    ("1 or 2", 3), ("-(2)", 2**64 - 2), ("+5", 5), ("ffffffff`ffffffff + 2", 1),
])
def test_numbers_and_operators(text, value):
    if value is None:
        with pytest.raises(ExprError):
            ev(text)
    else:
        assert ev(text) == value


def test_radix_changes_plain_numbers_only():
    s = FakeSession()
    s.radix = 10
    e = Evaluator(s)
    assert e.evaluate("10") == 10 and e.evaluate("0x10") == 16
    with pytest.raises(ExprError, match="Couldn't resolve error at 'ff'"):
        e.evaluate("ff")


def test_registers_and_subregisters():
    assert ev("@rax") == 0x1122334455667788
    assert ev("rax") == 0x1122334455667788  # not a hex number, not a symbol: a register
    assert ev("@eax") == 0x55667788 and ev("@ax") == 0x7788 and ev("@al") == 0x88 and ev("@ah") == 0x77
    assert ev("@r8d") == 8 and ev("@zf") == 1 and ev("@iopl") == 0
    assert ev("@rcx*2+@rcx") == 0x30
    assert ev("@eax", is64=False) == 0x11223344 and ev("@ax", is64=False) == 0x3344
    with pytest.raises(ExprError, match="Bad register error at '@foo\\+1'"):
        ev("@foo+1")


def test_register_set_partial():
    regs = {"rax": 0xFFFF_FFFF_FFFF_FFFF, "efl": 0}
    r = Registers(regs, True)
    r.set("al", 0x12)
    r.set("zf", 1)
    assert regs["rax"] == 0xFFFF_FFFF_FFFF_FF12 and regs["efl"] == 0x40


def test_pseudo_registers():
    s = FakeSession()
    s.pseudo_registers["$t3"] = 0x42
    e = Evaluator(s)
    assert e.evaluate("$t3+1") == 0x43 and e.evaluate("@$t3") == 0x42 and e.evaluate("$t19") == 0
    assert e.evaluate("$ip") == 0xFFFFF8048B58334C and e.evaluate("@$csp") == 0xFFFF850429892120
    assert e.evaluate("$retreg") == 0x1122334455667788 and e.evaluate("$ptrsize") == 8
    assert Evaluator(FakeSession(is64=False)).evaluate("$retreg64") == (2 << 32) | 0x11223344
    with pytest.raises(ExprError, match=r"Bad register error at '\$t20'"):
        e.evaluate("$t20")


def test_memory_operators():
    assert ev("poi(@rsp)") == 0x1000
    assert ev("poi(poi(@rsp))") == 0x12345678DEADBEEF
    assert ev("dwo(1000)") == 0xDEADBEEF and ev("qwo(1000)") == 0x12345678DEADBEEF
    assert ev("wo(1000)") == 0xBEEF and ev("by(1000)") == 0xEF and ev("by (1000+1)") == 0xBE
    assert ev("poi(@rsp+8) & 0xff") == 0
    assert ev("$vvalid(1000, 8)") == 1 and ev("$vvalid(1000, 9)") == 0


@pytest.mark.parametrize("text, message", [
    ("poi(0)", "Memory access error at ')'"),
    ("poi(0)+1", "Memory access error at ')+1'"),
    ("foo+1", "Couldn't resolve error at 'foo+1'"),
    ("1 + nt!Nothing", "Couldn't resolve error at 'nt!Nothing'"),
    ("1/0", "Divide by zero error at '/0'"),
    ("(1+2", "Syntax error at ''"),
    ("1+", "Syntax error at '+'"),
    ("1 2", "Syntax error at '2'"),
    ("10000000000000000", "Overflow error at '10000000000000000'"),
])
def test_errors_use_windbgs_words(text, message):
    with pytest.raises(ExprError) as e:
        ev(text)
    assert str(e.value) == message


def test_symbols_through_the_hook():
    s = FakeSession(symbols={"nt!kebugcheckex": 0xFFFFF8047BC00000, "nt": 0xFFFFF8047BA00000})
    e = Evaluator(s)
    assert e.evaluate("nt!KeBugCheckEx+0x10") == 0xFFFFF8047BC00010
    assert e.evaluate("nt") == 0xFFFFF8047BA00000
    assert e.evaluate("add") == 0xADD  # a word that reads as a number is a number


@pytest.mark.parametrize("text, start, count, end", [
    ("1000", 0x1000, None, None),
    ("1000 L4", 0x1000, 4, None),
    ("1000 l 4", 0x1000, 4, None),
    ("@rsp+8 L0n16", 0xFFFF850429892128, 16, None),
    ("1000 100f", 0x1000, 2, 0x100F),
    ("L8", None, 8, None),
    ("1000 L?20000000", 0x1000, 0x20000000, None),
])
def test_ranges(text, start, count, end):
    rng, pos = Evaluator(FakeSession()).parse_range(text, unit=8)
    assert (rng.start, rng.count, rng.end) == (start, count, end) and pos == len(text)


def test_range_errors():
    e = Evaluator(FakeSession())
    with pytest.raises(ExprError, match="Range error"):
        e.parse_range("0 L20000000", unit=1)
    with pytest.raises(ExprError, match="Range error"):
        e.parse_range("2000 1000", unit=1)
    assert e.parse_range("   ", unit=1) == (None, 3)


def test_on_a_real_dump():
    with kdshell.open(TRIAGE_19041) as s:
        e = Evaluator(s)
        assert e.evaluate("poi(@rsp+8)") == 0xFFFFF8048B5A2E2C
        assert e.evaluate("dwo(fffff804`7c600b20+10)") == 0x4742444B  # 'KDBG'
        assert s.capture("? dwo(fffff804`7c600b20+10)") == "Evaluate expression: 1195525195 = 00000000`4742444b\n"
        assert s.capture("? poi(0)") == "Memory access error at ')'\n"
        assert s.capture("? nt!KeBugCheckEx") == "Couldn't resolve error at 'nt!KeBugCheckEx'\n"
        # what the symbols layer will plug in
        s.resolve_symbol = lambda name, table={"nt!kebugcheckex": 0xFFFFF8047BDC5110}: table.get(name.lower())
        value = 0xFFFFF8047BDC5110 - (1 << 64)
        assert s.capture("? nt!KeBugCheckEx") == f"Evaluate expression: {value} = fffff804`7bdc5110\n"


def test_precedence_matches_c_for_arithmetic_and_bit_operators():
    """MASM's order of * + << & ^ | is C's (and Python's): random expressions agree, mod 2**64."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    ops = ["*", "+", "<<", "&", "^", "|"]

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=7), st.lists(st.sampled_from(ops), min_size=6))
    def check(numbers, chosen):
        parts = [f"0x{numbers[0]:x}"]
        for n, op in zip(numbers[1:], chosen):
            parts += [op, f"0x{(n % 40) if op == '<<' else n:x}"]
        text = " ".join(parts)
        assert ev(text) == _python_value(text), text

    check()


def _python_value(text: str) -> int:
    """The oracle: Python's parse of the same text (C's precedence), evaluated mod 2**64."""
    import ast
    import operator

    mask = (1 << 64) - 1
    binops = {ast.Mult: operator.mul, ast.Add: operator.add, ast.BitAnd: operator.and_,
              ast.BitXor: operator.xor, ast.BitOr: operator.or_,
              ast.LShift: lambda a, b: (a << b) & mask if b < 64 else 0}

    def walk(node):
        if isinstance(node, ast.Constant):
            return node.value
        return binops[type(node.op)](walk(node.left), walk(node.right)) & mask

    return walk(ast.parse(text, mode="eval").body)

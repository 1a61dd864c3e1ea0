"""!devnode, !podev, !poaction, !vad and !process's VadRoot line on the test machines, checked against
the device tree and VAD trees the builder laid out (truth 'pnp' and 'vads', fixtures/machine/pnpvad.py),
and on the corpus dumps (one line each where the dump lacks what the command reads)."""
import re

import pytest

import kdshell
from conftest import REPO, corpus_dumps_if_present, open_corpus, open_machine
from kdshell.kernel.devnodes import VadTree
from kdshell.kernel.layout import StructLayout
from kdshell.kernel.offsets import KernelOffsets

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
# PNP_DEVNODE_STATE and the MM_* protection index, from the kernel's public enums (not kdshell's table)
STATES = {0x301: "DeviceNodeUninitialized", 0x302: "DeviceNodeInitialized", 0x303: "DeviceNodeDriversAdded",
          0x308: "DeviceNodeStarted"}
PROTECTIONS = {1: "READONLY", 4: "READWRITE", 7: "EXECUTE_WRITECOPY"}
DEVNODE = re.compile(r"^( *)DevNode 0x([0-9a-f]+) for PDO 0x([0-9a-f]+)$")
VAD = re.compile(r"^([0-9a-f]{16}) +(\d+) +([0-9a-f]+) +([0-9a-f]+) +(\d+) (Private|Mapped ) (Exe |    ) "
                 r"([A-Z_]+(?: [A-Z_]+)?)(?:  (\\.+))?$")



@pytest.fixture(scope="module")
def m3b(machines):
    with open_machine(machines, "3b") as s:
        yield s, machines.truth("3b")


def _blocks(lines):
    """DevNode blocks: (depth, node, pdo, {InstancePath, ServiceName, State, Previous State})."""
    out = []
    for line in lines:
        m = DEVNODE.match(line)
        if m:
            out.append([len(m.group(1)) // 2, int(m.group(2), 16), int(m.group(3), 16), {}])
            continue
        body = line.strip()
        for key in ("InstancePath is ", "ServiceName is "):
            if body.startswith(key):
                out[-1][3][key.split()[0]] = body[len(key):].strip('"')
        for key in ("State = ", "Previous State = "):
            if body.startswith(key):
                out[-1][3][key[:-3]] = body[len(key):]
    return out


def test_devnode_0_1_is_the_whole_tree(m3b):
    s, truth = m3b
    pnp = truth["pnp"]
    nodes = {n["address"]: n for n in pnp["nodes"]}
    out = s.capture("!devnode 0 1").splitlines()
    assert out[0] == f"Dumping IopRootDeviceNode (= {pnp['root']:#x})"
    blocks = _blocks(out[1:])

    # depth first: each node, then its children in Child/Sibling order
    def order(address, depth):
        yield depth, address
        for c in nodes[address]["children"]:
            yield from order(c, depth + 1)

    assert [(d, a) for d, a, _, _ in blocks] == list(order(pnp["root"], 0))
    for depth, address, pdo, fields in blocks:
        n = nodes[address]
        assert depth == n["level"] and pdo == n["pdo"]
        assert fields["InstancePath"] == n["instance_path"]
        assert fields.get("ServiceName") == n["service"]
        assert fields["State"] == f"{STATES[n['state']]} ({n['state']:#x})"
        assert fields["Previous State"] == f"{STATES[n['previous_state']]} ({n['previous_state']:#x})"


def test_devnode_address_shows_that_node_and_flag_1_its_subtree(m3b):
    s, truth = m3b
    storfilt = next(n for n in truth["pnp"]["nodes"] if n["instance_path"] == "ROOT\\STORFILT\\0000")
    alone = _blocks(s.capture(f"!devnode {storfilt['address']:x}").splitlines())
    assert [(b[1], b[2]) for b in alone] == [(storfilt["address"], storfilt["pdo"])]
    sub = _blocks(s.capture(f"!devnode {storfilt['address']:x} 1").splitlines())
    assert [(b[0], b[1]) for b in sub] == [(0, storfilt["address"])] + [(1, c) for c in storfilt["children"]]


def test_devnode_service_filter(m3b):
    s, truth = m3b
    want = [(n["level"], n["address"]) for n in truth["pnp"]["nodes"] if n["service"] == "storfilt"]
    got = _blocks(s.capture("!devnode 0 1 StorFilt").splitlines()[1:])
    assert [(b[0], b[1]) for b in got] == want and len(want) == 2


def test_podev_reads_the_power_flags_of_each_pdo(m3b):
    s, truth = m3b
    for n in truth["pnp"]["nodes"]:
        out = s.capture(f"!podev {n['pdo']:x}").splitlines()
        flags = n["power_flags"]
        assert f"Device Object Extension: {n['extension']:016x}:" in out
        assert f"PowerFlags: {flags:08x} =>SystemState={flags & 0xF} DeviceState={(flags >> 4) & 0xF}" in out
        assert f"DevNode: {n['address']:016x}" in out


@pytest.mark.parametrize("command, expected", [
    ("!devnode 10", "10 is not in the dump: cannot read the device node"),
    ("!podev poi(nt!IopRootDeviceNode)", "is not a device object (its Type is"),
    ("!podev", "give a device object address"),
    ("!vad 10", "VAD 10 is not in the dump"),
])
def test_bad_input_is_one_line(m3b, command, expected):
    s, _ = m3b
    text = s.capture(command)
    assert expected in text and len(text.strip().splitlines()) == 1 and "Traceback" not in text


def _vad_rows(text):
    rows = [VAD.match(line) for line in text.splitlines()[1:] if line and not line.startswith("Total")]
    assert all(rows), text
    return rows


def test_vad_of_each_process_is_the_builders_tree(m3b):
    s, truth = m3b
    for proc in truth["vads"]:
        s.capture(f".process {proc['process']:x}")
        text = s.capture("!vad")
        rows = _vad_rows(text)
        vads = sorted(proc["vads"], key=lambda v: v["start_vpn"])
        assert [int(r.group(1), 16) for r in rows] == [v["address"] for v in vads]
        for r, v in zip(rows, vads):
            assert (int(r.group(2)), int(r.group(3), 16), int(r.group(4), 16)) == \
                (v["level"], v["start_vpn"], v["end_vpn"])
            assert int(r.group(5)) == v["commit"]
            assert r.group(6) == ("Private" if v["private"] else "Mapped ")
            assert (r.group(7) == "Exe ") == (v["vad_type"] == 2)
            assert r.group(8).strip() == PROTECTIONS[v["protection"]]
            assert r.group(9) == v["file_name"]
        levels = [v["level"] for v in vads]
        assert f"Total VADs: {len(vads)}, average level: {sum(levels) // len(levels)}, maximum depth: {max(levels)}" \
            in text
    s.capture(".process 0")


def test_process_0_7_shows_vadroot_and_count(m3b):
    s, truth = m3b
    text = s.capture("!process 0 7").splitlines()
    for proc in truth["vads"]:
        block = text[text.index(f"PROCESS {proc['process']:016x}"):]
        assert f"    VadRoot {proc['root']:016x} Vads {len(proc['vads'])}" in block[:8]


def test_the_builtin_19041_table_agrees_with_the_machine_kernel(m3b):
    """With no PDB, the offsets.json entry for 19041 reads the same VADs (so real 19041..19045 kernel dumps
    without symbols are read with the layouts the fixture kernel declares)."""
    s, truth = m3b
    k = s.kernel
    table = KernelOffsets(19041, True)
    for spec in (StructLayout(k.offsets, {"r": (("_EPROCESS", "VadRoot"),)}),):
        assert spec.get("r") == table.offset("_EPROCESS", "VadRoot")
    for name in ("_DEVICE_NODE", "_DEVOBJ_EXTENSION"):
        for field in table.entry.types[name]["fields"]:
            assert table.offset(name, field) == k.offsets.offset(name, field), (name, field)
    proc = truth["vads"][-1]
    walk = VadTree(k.memory, table, True).walk(proc["root"])
    assert [(v.address, v.start_vpn, v.end_vpn, v.protection, v.private, v.level) for v in walk.vads] == \
        [(v["address"], v["start_vpn"], v["end_vpn"], v["protection"], v["private"], v["level"])
         for v in sorted(proc["vads"], key=lambda v: v["start_vpn"])]


def test_small_machine_dump_says_what_it_lacks(machines):
    with open_machine(machines, "3b", "small") as s:
        for command in ("!devnode 0 1", "!podev 0", "!vad", "!poaction", "!pocaps"):
            text = s.capture(command)
            assert len(text.strip().splitlines()) == 1 and "small memory dump keeps no" in text, command


@pytest.mark.parametrize("path", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_dumps(path):
    with open_corpus(path) as s:
        for command in ("!devnode 0 1", "!devnode ffff800000001000", "!podev ffff800000001000", "!poaction", "!pocaps",
                        "!vad"):
            text = s.capture(command)
            assert "Traceback" not in text and "Internal error" not in text
            assert len(text.strip().splitlines()) == 1, (command, text)
            if s.kernel.small:
                assert "small memory dump keeps no" in text
        if not s.kernel.small:  # the truncated 19045 kernel dump: no nt PDB, no IopRootDeviceNode symbol
            assert "nt!IopRootDeviceNode is not in the kernel's symbols" in s.capture("!devnode 0 1")


class _Bytes:
    """Memory made of a few byte ranges (MemoryNotPresent elsewhere)."""

    def __init__(self, ranges):
        self.ranges = ranges

    def read(self, address, size):
        from kdshell.errors import MemoryNotPresent

        for base, data in self.ranges.items():
            if base <= address and address + size <= base + len(data):
                return bytes(data[address - base:address - base + size])
        raise MemoryNotPresent(f"{address:x} not present")


def test_hostile_trees_give_bounded_answers(m3b):
    """A device node whose child's sibling is the node itself, and a VAD that is its own left child:
    the walks stop with a warning (offsets from the machine kernel's PDB)."""
    import struct

    from kdshell.kernel.devnodes import DevNodes

    s, _ = m3b
    off = s.kernel.offsets
    a, b = 0xFFFF_9000_0000_0000, 0xFFFF_9000_0000_1000
    na, nb = bytearray(0x400), bytearray(0x400)
    struct.pack_into("<Q", na, off.offset("_DEVICE_NODE", "Child"), b)
    struct.pack_into("<Q", nb, off.offset("_DEVICE_NODE", "Sibling"), b)  # b is its own sibling
    struct.pack_into("<Q", nb, off.offset("_DEVICE_NODE", "Child"), a)  # and a's parent is its child
    tree = DevNodes(_Bytes({a: na, b: nb}), off, True).tree(a)
    assert [n.address for _, n in tree.nodes] == [a, b]
    assert any("met twice" in w for w in tree.warnings)
    vad = bytearray(0x40)
    struct.pack_into("<Q", vad, off.offset("_MMVAD_SHORT", "VadNode.Left"), a)
    walk = VadTree(_Bytes({a: vad}), off, True).walk(a)
    assert walk.vads == [] and any("met twice" in w for w in walk.warnings)

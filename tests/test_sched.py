"""!ready, !dpcs, !timer on the test machines' own queues, and the 0x133 DPC watchdog scenario.

The x64 fixture kernel keeps each processor's DPC queue, ready lists and timer table in its KPRCB
at the real 20H1 offsets (fixtures/images/src/inc/ntamd64.h) and fills them with its own code
(nt/ke.c: KeInsertQueueDpc, KiReadyThread, KeSetTimerEx). At KeBugCheckEx's entry the builder
readies three waiting user threads through KeSetEvent with boosts, queues a DPC and sets two
timers (fixtures/machine/sched.py); in scenario 133 it also delivers the clock interrupt until the
DPC watchdog bug-checks. Expected values come from the truth JSON: the builder's record of what it
asked for, and the lists walked after the run with the PDB text layouts (not kdshell)."""
import pytest

from conftest import open_machine, run_lines
from fixtures.machine.sched import BOOSTS, QUEUED_DPC, TIMERS

SCENARIOS = ("e2", "133", "d1", "e2-deadlock")
MAX_INCREMENT = 156250  # nt!KeMaximumIncrement: the timer table's 15.625 ms buckets


def run(session, text):
    with session.out.capture() as buf:
        ok = session.run(text)
    return ok, "".join(buf).splitlines()


def thread_row(truth, address, where):
    t = next(t for t in truth["threads"] if t["address"] == address)
    return (f"    THREAD {address:016x}  Cid {t['cid'][0]:04x}.{t['cid'][1]:04x}  Teb: {t['teb'] or 0:016x} "
            f"Win32Thread: {0:016x} READY{where}")


@pytest.fixture(scope="module", params=[(s, k) for s in SCENARIOS for k in ("kernel", "complete")
                                        if (s, k) not in {("e2-deadlock", "complete")}],
                ids=lambda p: f"{p[0]}-{p[1]}")
def machine(request, machines):
    scenario, kind = request.param
    s = open_machine(machines, scenario, kind)
    yield s, machines.truth(scenario)
    s.close()


def test_the_kernel_queued_what_the_builder_asked_for(machines):
    """The machine itself: KiReadyThread put each readied thread in DispatcherReadyListHead[base +
    boost] with its ReadySummary bit, KeInsertQueueDpc put the DPC in DpcData[0], and KeSetTimerEx put
    each timer in the bucket of its due time."""
    for scenario in SCENARIOS:
        q = machines.truth(scenario)["queues"]
        p0 = q["processors"][0]
        injected = q["injected"]
        assert [r["boost"] for r in injected["readied"]] == list(BOOSTS)
        for r in injected["readied"]:
            assert [8 + r["boost"], r["thread"]] in p0["ready"]
        summary = 0
        for priority, _ in p0["ready"]:
            summary |= 1 << priority
        assert p0["ready_summary"] == summary and len({p for p, _ in p0["ready"]}) >= 3
        assert injected["dpcs"][0]["address"] in [d["address"] for d in p0["dpcs"]]
        assert p0["dpcs"][-1]["name"] == QUEUED_DPC and not any(d["threaded"] for d in p0["dpcs"])
        for want, (routine, _, period) in zip(injected["timers"], TIMERS):
            got = next(t for t in p0["timers"] if t["address"] == want["address"])
            assert (got["name"], got["period"], got["dpc"]) == (routine, period, want["dpc"])
            assert got["hand"] == (got["due"] // MAX_INCREMENT) % 256 and got["table"] == 0


def test_ready_lists_the_ready_threads_by_priority(machine):
    s, truth = machine
    out = run_lines(s, "!ready")
    want = []
    for p in truth["queues"]["processors"]:
        if not p["ready"]:
            want.append(f"Processor {p['number']}: No threads in READY state")
            continue
        for priority in sorted({pr for pr, _ in p["ready"]}, reverse=True):
            want.append(f"Processor {p['number']}: Ready Threads at priority {priority}")
            want += [thread_row(truth, t, f" on processor {p['number']}") for pr, t in p["ready"] if pr == priority]
    assert out == want


def test_dpcs_lists_the_queued_dpcs(machine):
    s, truth = machine
    out = run_lines(s, "!dpcs")
    want = ["CPU Type      KDPC       Function"]
    for p in truth["queues"]["processors"]:
        want += [f"{p['number']:2d}: {'Threaded:' if d['threaded'] else 'Normal  :'} 0x{d['address']:016x} "
                 f"0x{d['routine']:016x} {d['name']}" for d in p["dpcs"]]
    assert out == want and len(want) >= 2
    assert run_lines(s, "!dpcs 0") == want
    assert run(s, "!dpcs 1")[1] == ["No queued DPCs found."]


def test_timer_lists_each_processors_timer_table(machine):
    s, truth = machine
    out = run_lines(s, "!timer")
    q = truth["queues"]
    want = []
    total = longest = 0
    for p in q["processors"]:
        want.append(f"PROCESSOR {p['number']} (nt!_KTIMER_TABLE {p['timer_table']:016x})")
        last = None
        counts: dict = {}
        for t in p["timers"]:
            due = f"{t['due'] & 0xFFFFFFFF:08x} {t['due'] >> 32:08x}"
            what = f"{t['name']} (DPC @ {t['dpc']:016x})" if t["dpc"] else f"thread {t['thread']:016x}"
            key = (t["table"], t["hand"])
            bucket = "   " if key == last else f"{t['hand']:3d}"
            last = key
            counts[key] = counts.get(key, 0) + 1
            want.append(f"{bucket} {t['address']:016x} {'P' if t['period'] else ' '} {due}  {what}")
        total += len(p["timers"])
        longest = max([longest] + list(counts.values()))
    start = out.index(want[0])
    assert out[start:start + len(want)] == want
    assert out[-1] == f"Total Timers: {total}, Maximum List: {longest}" and total >= 2
    # every timer the builder set is there, and the storfilt thread's KeDelayExecutionThread timer
    rows = "\n".join(out)
    for t in q["injected"]["timers"]:
        assert f"{t['address']:016x}" in rows
    threads = [t["thread"] for p in q["processors"] for t in p["timers"] if t["thread"]]
    storfilt = [t["address"] for t in truth["threads"] if t["kind"] == "system" and t["wait_reason"] == 4]
    assert set(storfilt) <= set(threads)


def test_small_dumps_answer_in_one_line(machines):
    """(!exqueue on the machine's node queues: test_exqueue.py)"""
    with open_machine(machines, "133", "small") as s:
        for command in ("!ready", "!dpcs", "!timer", "!exqueue"):
            ok, out = run(s, command)
            assert not ok and len(out) == 1 and "small memory dump" in out[0], (command, out)


# -- 0x133 DPC_WATCHDOG_VIOLATION -------------------------------------------------------------------

def test_the_clock_counted_the_dpc_to_its_limit(machines):
    truth = machines.truth("133")
    p0 = truth["queues"]["processors"][0]
    assert truth["bugcheck"]["code"] == 0x133
    assert truth["bugcheck"]["parameters"] == [0, 0x501, 0x500, 0]
    assert p0["dpc_time_limit"] == 0x500 and p0["dpc_time_count"] == 0x501 and p0["dpc_routine_active"]
    assert truth["queues"]["clock_ticks"] == p0["clock_interrupts"] == 0x501
    kbd = next(m for m in truth["modules"] if m["name"] == "kbdcrash.sys")
    assert kbd["base"] <= p0["current_dpc_routine"] < kbd["base"] + kbd["size"]
    # the clock asked for timer expiration, which cannot run under the spinning DPC
    assert [d["name"] for d in p0["dpcs"]][0] == "nt!KiTimerExpiration"


@pytest.mark.parametrize("kind", ["kernel", "complete", "small"])
def test_k_shows_the_clock_interrupt_over_the_spinning_dpc(machines, kind):
    truth = machines.truth("133")
    chain = [f["function"] for f in truth["call_chain"]]
    assert chain[:6] == ["nt!KeBugCheckEx", "nt!KeAccumulateTicks+0x9d", chain[2], chain[3], chain[4], chain[5]]
    kinds = [f["kind"] for f in truth["call_chain"]]
    assert chain[3].startswith("nt!KiClockInterrupt+") and kinds[4] == "trap"
    assert chain[4].startswith("kbdcrash!KbdCrashWaitForController+") and chain[5].startswith("nt!KiExecuteAllDpcs+")
    with open_machine(machines, "133", kind) as s:
        out = run_lines(s, "k")
    sites = [line.split()[-1] for line in out[1:]]
    assert sites == chain


@pytest.mark.parametrize("kind", ["kernel", "small"])
def test_analyze_names_the_watchdogs_processor_and_dpc_routine(machines, kind):
    truth = machines.truth("133")
    p0 = truth["queues"]["processors"][0]
    with open_machine(machines, "133", kind) as s:
        out = run_lines(s, "!analyze -v")
        routine = s.symbols.name_at(p0["current_dpc_routine"])
    assert routine == "kbdcrash!KbdCrashPollDpcRoutine"  # a tail call: only its callee is on the stack
    fields = dict(line.split(":", 1) for line in out if line.startswith("DPC_") and ":" in line)
    assert fields["DPC_TIMEOUT_TYPE"].strip() == "SINGLE_DPC_TIMEOUT_EXCEEDED"
    assert (fields["DPC_RUNTIME"].strip(), fields["DPC_TIME_LIMIT"].strip()) == ("501", "500")
    assert fields["DPC_PROCESSOR"].strip() == str(p0["number"])
    assert fields["DPC_ROUTINE"].strip() == routine

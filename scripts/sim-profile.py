#!/usr/bin/env python3
"""Where the simulator's time goes: read `perf script -F comm,tid,period,ip,sym --no-inline` output and
charge each sample to the innermost frame that belongs to a known part (docs/benchmarks.md,
"Simulation speed"). Frames of libc, the kernel, alloc/core/std are skipped: a memcpy is charged
to whoever called it.

usage: perf script -i perf.data -F comm,tid,period,ip,sym --no-inline | scripts/sim-profile.py [TOP]
"""
import collections
import re
import sys

PARTS = [
    ("logging/tracing", r"^(tracing|tracing_core|tracing_subscriber|slog)::|core::fmt::|alloc::fmt::format"),
    ("harness: linearizability", r"^durakv_sim::linearizability"),
    ("harness: other checkers", r"^durakv_sim::checkers"),
    ("harness: run, workload, faults", r"^durakv_sim::|^<durakv_sim::"),
    ("SimFs", r"^(<)?durakv_faults::"),
    ("node: WAL encode, CRC", r"^(<)?durakv::wal::|^crc32c::"),
    ("node: SimEngine, FSM", r"^(<)?durakv::fsm::"),
    ("node: RESP server, codec", r"^(<)?durakv::(server|codec)::"),
    ("node: raft-rs, protobuf", r"^(<)?(raft|raft_proto|raft_log|prost|protobuf|bytes)::|^<raft"),
    ("node: storage, snapshot, replica, loop, transport",
     r"^(<)?durakv::"),
    ("madsim: network", r"^(<)?madsim::sim::net::|^<madsim::sim::net"),
    ("madsim: scheduler, timers, tasks", r"^(<)?(madsim|async_task|naive_timer|tokio|madsim_tokio|futures\w*|async_channel|event_listener\w*)::|^<async_task|^<madsim|^<tokio|^<futures"),
]
PARTS = [(n, re.compile(p)) for n, p in PARTS]

def part(stack):
    for sym in stack:
        for name, rx in PARTS:
            if rx.search(sym):
                return name, sym
    return "other (startup, libc, kernel)", stack[0] if stack else "?"

def main():
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    totals = collections.Counter()
    leaf = collections.Counter()
    stack = []
    n = 0
    def flush():
        nonlocal n
        if stack:
            p, sym = part(stack)
            totals[p] += 1
            leaf[(p, re.sub(r"::h[0-9a-f]{16}$", "", sym))] += 1
            n += 1
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            flush(); stack = []
            continue
        if not line.startswith("\t") and not line.startswith(" " * 4):
            flush(); stack = []
            continue
        parts = line.strip().split(" ", 1)
        stack.append(parts[1] if len(parts) > 1 else parts[0])
    flush()
    for p, c in totals.most_common():
        print(f"{100.0 * c / max(n, 1):6.1f}%  {p}")
    print(f"({n} samples)")
    if top:
        print()
        for (p, s), c in leaf.most_common(top):
            print(f"{100.0 * c / max(n, 1):6.1f}%  {p:40.40s}  {s[:110]}")

main()

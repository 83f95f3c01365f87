#!/usr/bin/env python3
"""Read callgrind profiles (recorded with --demangle=no) and print, one per line, the
symbols of one object that ran, the most expensive first (self cost summed over the
profiles). scripts/symbol-order.sh uses it to write spilo-core/symbol-order.txt.

usage: callgrind_symbols.py OBJECT_SUFFIX PROFILE...
"""
import re
import sys

NAMED = re.compile(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$")


def read(path, suffix, cost):
    obs, fns = {}, {}
    cur_ob, cur_fn, skip_next = None, None, False
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            m = NAMED.match(line)
            if m:
                called, kind, ident, name = m.groups()
                table = obs if kind == "ob" else fns
                if name:
                    table[ident] = name
                if not called:
                    if kind == "ob":
                        cur_ob = table.get(ident)
                    else:
                        cur_fn = table.get(ident)
                        if cur_ob and cur_ob.endswith(suffix) and cur_fn:
                            cost.setdefault(cur_fn, 0)
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost, not this function's.
                skip_next = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                fields = line.split()
                if (
                    len(fields) >= 2
                    and cur_ob
                    and cur_ob.endswith(suffix)
                    and cur_fn
                    and fields[-1].isdigit()
                ):
                    cost[cur_fn] = cost.get(cur_fn, 0) + int(fields[-1])


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: callgrind_symbols.py OBJECT_SUFFIX PROFILE...")
    suffix, cost = sys.argv[1], {}
    for path in sys.argv[2:]:
        read(path, suffix, cost)
    for name, _ in sorted(cost.items(), key=lambda kv: (-kv[1], kv[0])):
        # Valgrind's own labels ("(below main)", bare addresses) are not symbols.
        if name.startswith("(") or name.startswith("0x"):
            continue
        print(name)


if __name__ == "__main__":
    main()

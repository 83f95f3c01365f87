#!/usr/bin/env python3
"""Read callgrind profiles (recorded with --demangle=no) and print, one per line, the
symbols of one object that ran, the most expensive first (self cost in instructions, summed
over the profiles). scripts/symbol-order.sh uses it to write spilo-core/symbol-order.txt.

usage: callgrind_symbols.py [--costs] OBJECT_SUFFIX PROFILE...
  --costs   print "COST NAME" instead of the name alone
"""
import re
import sys

NAMED = re.compile(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$")
# Callgrind names a recursive call's levels "name'2", "name'3" (--separate-recs): one symbol.
RECURSION = re.compile(r"'\d+$")


def read(path, suffix, cost):
    obs, fns = {}, {}
    cur_ob, cur_fn, skip_next = None, None, False
    column = 0  # which event of a cost line is Ir (after the position)
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.startswith("events:"):
                events = line.split(":", 1)[1].split()
                column = events.index("Ir") if "Ir" in events else 0
                continue
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
                        if cur_fn:
                            cur_fn = RECURSION.sub("", cur_fn)
                        if cur_ob and cur_ob.endswith(suffix) and cur_fn:
                            cost.setdefault(cur_fn, 0)
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost, not this function's.
                skip_next = True
                continue
            if line and (line[0].isdigit() or line[0] in "+-*"):
                if skip_next:
                    skip_next = False
                    continue
                fields = line.split()[1:]  # the position first, then the events
                if cur_ob and cur_ob.endswith(suffix) and cur_fn:
                    # Trailing events left out of a line are zero.
                    value = fields[column] if column < len(fields) else "0"
                    if value.isdigit():
                        cost[cur_fn] = cost.get(cur_fn, 0) + int(value)


def main():
    args = sys.argv[1:]
    costs = bool(args) and args[0] == "--costs"
    if costs:
        args = args[1:]
    if len(args) < 2:
        sys.exit("usage: callgrind_symbols.py [--costs] OBJECT_SUFFIX PROFILE...")
    suffix, cost = args[0], {}
    for path in args[1:]:
        read(path, suffix, cost)
    for name, value in sorted(cost.items(), key=lambda kv: (-kv[1], kv[0])):
        # Valgrind's own labels ("(below main)", bare addresses) are not symbols.
        if name.startswith("(") or name.startswith("0x"):
            continue
        print(f"{value} {name}" if costs else name)


if __name__ == "__main__":
    main()

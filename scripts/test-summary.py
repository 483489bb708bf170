#!/usr/bin/env python3
"""Sum meson test logs into one closing line "N passed, N failed".

A test program that prints its own "N passed, M failed" line counts as
N + M cases; any other test counts as one. A program meson marks failed
(crash, sanitizer report at exit, timeout) counts at least one failure
even if its own line said 0 failed. Exit 1 if anything failed.
"""
import json
import re
import sys

LINE = re.compile(r'^(\d+) passed, (\d+) failed', re.M)

passed = failed = 0
for path in sys.argv[1:]:
    setup = 'asan' if 'asan' in path else 'default'
    try:
        with open(path, encoding='utf-8') as f:
            entries = [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        print('summary: cannot read %s: %s' % (path, e))
        failed += 1
        continue
    for t in entries:
        ok = t.get('result') in ('OK', 'EXPECTEDFAIL', 'SKIP')
        found = LINE.findall(t.get('stdout') or '')
        p, fl = (int(found[-1][0]), int(found[-1][1])) if found else (1 if ok else 0, 0 if ok else 1)
        if not ok and fl == 0:
            fl, p = 1, max(p - 1, 0)
        passed += p
        failed += fl
        if not ok:
            print('FAILED: %s [%s] %s' % (t.get('name'), setup, t.get('result')))

print('%d passed, %d failed' % (passed, failed))
sys.exit(1 if failed else 0)

"""Shared bits of the integration tests: a clean environment for the
binaries under test, and the runner that prints one "name: ok|FAIL" line
per test and the closing "N passed, M failed" line the test summary reads.
"""
import os
import sys
import traceback


def clean_env():
    """The environment without TOLLGATE_* variables, so that a developer's
    own settings never leak into a test."""
    return {k: v for k, v in os.environ.items() if not k.startswith('TOLLGATE_')}


def run_module_tests(namespace):
    """Run every test_* function of a module's globals, in name order;
    exit 1 if any failed."""
    tests = [v for k, v in sorted(namespace.items()) if k.startswith('test_') and callable(v)]
    passed = failed = 0
    for t in tests:
        try:
            t()
            print('%s: ok' % t.__name__)
            passed += 1
        except Exception:
            print('%s: FAIL' % t.__name__)
            traceback.print_exc()
            failed += 1
        sys.stdout.flush()
    print('%d passed, %d failed' % (passed, failed))
    sys.exit(1 if failed else 0)

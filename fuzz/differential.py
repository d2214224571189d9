#!/usr/bin/env python3
"""fuzz/differential.py REPLAY FILE... - PostgreSQL's JSON parser vs Python's.

Runs the standalone replay build of fuzz/fuzz_message.c (REPLAY) over the
files and checks, for each, that the decoder calls the body a syntax error
("invalid JSON ..." / "invalid UTF-8 ...") exactly when Python's json module,
held to the same contract, refuses it: strict UTF-8, RFC 8259 (no NaN or
Infinity), no \\u0000 and no lone surrogate in any string or key, nesting at
most 64 deep.  For an accepted order, order_id must be the one Python reads.
Run by fuzz/run.sh on fuzz/corpus; exits 1 on any disagreement.
"""
import json
import subprocess
import sys

MAX_DEPTH = 64


def refuse_constant(name):
    raise ValueError("non-RFC constant " + name)


def strings_ok(v, depth=1):
    """False if a string or key holds \\u0000 or a lone surrogate, or too deep."""
    if isinstance(v, (dict, list)):
        if depth > MAX_DEPTH:
            return False
        items = v.items() if isinstance(v, dict) else ((None, x) for x in v)
        for k, x in items:
            if k is not None and not strings_ok(k):
                return False
            if not strings_ok(x, depth + 1):
                return False
        return True
    if isinstance(v, str):
        if "\0" in v:
            return False
        try:
            v.encode("utf-8")  # lone surrogates do not encode
        except UnicodeEncodeError:
            return False
    return True


def python_verdict(body):
    """The parsed value, or None if the body is not valid under the contract."""
    try:
        text = body.decode("utf-8")
        value = json.loads(text, parse_constant=refuse_constant)
    except (ValueError, RecursionError):
        return None
    return value if strings_ok(value) else None


def main():
    replay, files = sys.argv[1], sys.argv[2:]
    out = subprocess.run([replay] + files, check=True, capture_output=True).stdout
    bad = 0
    for line in out.decode("ascii").splitlines():
        name, verdict, detail = line.split("\t", 2)
        with open(name, "rb") as f:
            value = python_verdict(f.read())
        syntax_error = verdict == "ERR" and detail.startswith(("invalid JSON", "invalid UTF-8"))
        if syntax_error != (value is None):
            bad += 1
            print(f"DISAGREE {name}: decoder {verdict} {detail!r}, "
                  f"Python {'refuses' if value is None else 'accepts'}")
        elif verdict == "OK" and (not isinstance(value, dict) or str(value.get("order_id")) != detail):
            bad += 1
            print(f"DISAGREE {name}: decoder order_id {detail}, Python {value!r:.60}")
    print(f"differential.py: {len(files)} inputs, {bad} disagreements")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

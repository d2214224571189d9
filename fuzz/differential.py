#!/usr/bin/env python3
"""Differential check of the C message decoder against an independent model.

    python3 fuzz/differential.py FUZZ_REPLAY_BINARY FILE_OR_DIR...

The model below re-implements the contract with Python's strict UTF-8
decoder, the json module (plus hooks for NaN, lone surrogates, duplicate keys
and depth), Decimal for amounts and datetime for dates.  For every input it
compares accept/refuse and, for accepted orders, the decoded fields; for
refused ones, whether the C reason is a syntax reason exactly when the input
is not JSON.  Exits 1 on any disagreement.
"""
import datetime
import json
import os
import re
import subprocess
import sys
from decimal import Decimal

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


class Num:
    def __init__(self, text, is_int):
        self.text, self.is_int = text, is_int


class Obj(list):
    """An object kept as its list of pairs, so duplicates stay visible."""


def depth(v):
    # iterative, so a deep input cannot overflow Python's stack
    best, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (Obj, list)):
            best = max(best, d)
            items = [val for _, val in x] if isinstance(x, Obj) else x
            stack.extend((i, d + 1) for i in items)
    return best


def strings(v):
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            yield x
        elif isinstance(x, Obj):
            for k, val in x:
                yield k
                stack.append(val)
        elif isinstance(x, list):
            stack.extend(x)


class NotJson(Exception):
    pass


def load(raw):
    try:
        text = raw.decode('utf-8', errors='strict')
    except UnicodeDecodeError:
        raise NotJson('utf8')
    if len(text) - len(text.lstrip(' \t\r\n')) > 10**5 or text.count('[') + text.count('{') > 5000:
        # keep the model's recursion safe; such inputs are not in the corpus
        raise SystemExit('input too deep/large for the model')
    def bad_const(c):
        raise NotJson('constant')
    try:
        v = json.loads(text, object_pairs_hook=Obj,
                       parse_int=lambda s: Num(s, True),
                       parse_float=lambda s: Num(s, False),
                       parse_constant=bad_const)
    except (ValueError, RecursionError):
        raise NotJson('syntax')
    for s in strings(v):
        try:
            s.encode('utf-8')
        except UnicodeEncodeError:
            raise NotJson('lone surrogate')
    if depth(v) > 64:
        raise NotJson('depth')
    return v


RFC3339 = re.compile(r'^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d{1,6})?([Zz]|[+-](\d\d):(\d\d))$')


def ts_ok(s):
    if '\x00' in s:
        return False
    m = RFC3339.match(s)
    if not m or not s.isascii():
        return False
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    if y < 1:
        return False
    try:
        datetime.date(y, mo, d)
    except ValueError:
        return False
    if h > 23 or mi > 59 or sec > 60:
        return False
    if m.group(9) is not None and (int(m.group(9)) > 15 or int(m.group(10)) > 59):
        return False
    return True


def model_order(v, known=('order_id', 'uid', 'symbol', 'quantity', 'amount', 'created_at')):
    if not isinstance(v, Obj):
        return None
    fields, names, nunknown = {}, set(), 0
    for k, val in v:
        if k in names:
            return None
        names.add(k)
        if k in known:
            fields[k] = val
        else:
            nunknown += 1
    if nunknown > 128:
        return None
    out = {}
    oid = fields.get('order_id', 'missing')
    if not (isinstance(oid, Num) and oid.is_int and 1 <= int(oid.text) <= INT64_MAX):
        return None
    out['order_id'] = str(int(oid.text))
    uid = fields.get('uid')
    if uid is None:
        out['uid'] = '-'
    elif isinstance(uid, Num) and uid.is_int and INT64_MIN <= int(uid.text) <= INT64_MAX:
        out['uid'] = str(int(uid.text))
    else:
        return None
    sym = fields.get('symbol')
    if sym is None:
        out['symbol'] = '-'
    elif isinstance(sym, str) and 1 <= len(sym) <= 12 and '\x00' not in sym:
        out['symbol'] = 'S'
    else:
        return None
    q = fields.get('quantity')
    if q is None:
        out['quantity'] = '-'
    elif isinstance(q, Num) and q.is_int and 1 <= int(q.text) <= 2**31 - 1:
        out['quantity'] = str(int(q.text))
    else:
        return None
    a = fields.get('amount')
    if a is None:
        out['amount'] = '-'
    elif (isinstance(a, Num) and len(a.text) <= 63 and Decimal('1e-307') <= Decimal(a.text) <= Decimal('1e15')):
        out['amount'] = a.text
    else:
        return None
    c = fields.get('created_at')
    if c is None:
        out['created_at'] = '-'
    elif isinstance(c, str) and ts_ok(c):
        out['created_at'] = c
    else:
        return None
    if out['quantity'] == '-' and out['amount'] == '-':
        return None
    return out


def model_event(v):
    if not isinstance(v, Obj):
        return None
    names, fields, nunknown = set(), {}, 0
    for k, val in v:
        if k in names:
            return None
        names.add(k)
        if k in ('type', 'condition', 'new_val'):
            fields[k] = val
        else:
            nunknown += 1
    if nunknown > 128:
        return None
    if any('\x00' in s for s in strings(v)):
        return None
    t = fields.get('type')
    if t not in ('C', 'R', 'U', 'D'):
        return None
    for k in ('condition', 'new_val'):
        if k in fields and not isinstance(fields[k], Obj):
            return None
    if t != 'C' and 'condition' not in fields:
        return None
    if t == 'U' and 'new_val' not in fields:
        return None
    return t


def main():
    binary, paths = sys.argv[1], sys.argv[2:]
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p))
        else:
            files.append(p)
    c_verdicts = {}
    for i in range(0, len(files), 500):
        out = subprocess.run([binary] + files[i:i + 500], env=dict(os.environ, OF_FUZZ_VERBOSE='1'),
                             check=True, capture_output=True).stdout.decode()
        for line in out.splitlines():
            parts = line.split('\t')
            if len(parts) >= 3:
                c_verdicts[(parts[0], parts[1])] = parts[2:]
    bad = 0
    for f in files:
        raw = open(f, 'rb').read()
        try:
            v = load(raw)
            syntax_ok = True
        except NotJson:
            v, syntax_ok = None, False
        want_o = model_order(v) if syntax_ok else None
        want_e = model_event(v) if syntax_ok else None
        got_o = c_verdicts[(f, 'order')]
        got_e = c_verdicts[(f, 'event')]
        problems = []
        if want_o is None:
            if got_o[0] == 'OK':
                problems.append('order accepted by C, refused by model')
            elif got_o[1].startswith(('invalid JSON', 'invalid UTF-8')) == syntax_ok:
                problems.append('order reason class differs: %s (model syntax_ok=%s)' % (got_o[1], syntax_ok))
        else:
            want = [want_o[k] for k in ('order_id', 'uid', 'symbol', 'quantity', 'amount', 'created_at')]
            if got_o[0] != 'OK':
                problems.append('order refused by C (%s), accepted by model' % got_o[1])
            elif got_o[1:] != want:
                problems.append('order fields differ: C %s model %s' % (got_o[1:], want))
        if want_e is None:
            if got_e[0] == 'OK':
                problems.append('event accepted by C, refused by model')
        elif got_e[0] != 'OK' or got_e[1] != want_e:
            problems.append('event: C %s, model %s' % (got_e, want_e))
        if problems:
            bad += 1
            print('%s: %r\n  %s' % (f, raw[:200], '\n  '.join(problems)))
    print('differential: %d inputs, %d disagreements' % (len(files), bad))
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()

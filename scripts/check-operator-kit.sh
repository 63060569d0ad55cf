#!/usr/bin/env bash
# Check the operator kit against the relay:
#   (a) promtool check rules / test rules on deploy/prometheus;
#   (b) start the relay ($1, default target/debug/mediarelay) on loopback and read the metric
#       families its /metrics exposes;
#   (c) every PromQL expression in deploy/grafana/mediarelay.json and the rules file must parse
#       (promtool check rules on a one-rule file each) and name only exposed metrics or
#       recording rules defined in the rules file.
# Needs promtool (Debian: apt-get install prometheus) and python3 (PyYAML is installed with pip
# if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

RELAY=${1:-target/debug/mediarelay}
RULES=deploy/prometheus/mediarelay.rules.yml
TESTS=deploy/prometheus/tests
DASH=deploy/grafana/mediarelay.json

fail() { echo "operator kit: FAILED: $*" >&2; exit 1; }

command -v promtool >/dev/null || fail "promtool not found (apt-get install prometheus)"
command -v python3 >/dev/null || fail "python3 not found"
[ -x "$RELAY" ] || fail "relay binary $RELAY not found or not executable (build it first)"
if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet pyyaml 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages pyyaml \
        || fail "PyYAML missing and pip could not install it"
fi

WORK=$(mktemp -d /tmp/operator-kit.XXXXXX)
RELAY_PID=
cleanup() {
    if [ -n "$RELAY_PID" ] && kill -0 "$RELAY_PID" 2>/dev/null; then
        kill "$RELAY_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$RELAY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# (a) The rules load and their unit tests pass.
echo "== promtool check rules"
promtool check rules "$RULES" || fail "promtool check rules $RULES"
echo "== promtool test rules"
promtool test rules "$TESTS"/*.yml || fail "promtool test rules $TESTS"

# (b) A live relay's metric families.
echo "== starting $RELAY"
mkdir -p "$WORK/media"
"$RELAY" ticket issue --tickets "$WORK/tickets.json" --uid operator-kit --streams 'live/*' --ttl 1h \
    >/dev/null 2>"$WORK/issue.log" || { cat "$WORK/issue.log" >&2; fail "ticket issue"; }
"$RELAY" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --storage "$WORK/media" \
    --tickets "$WORK/tickets.json" >"$WORK/relay.out" 2>"$WORK/relay.log" &
RELAY_PID=$!
ADMIN=
for _ in $(seq 100); do
    kill -0 "$RELAY_PID" 2>/dev/null || { cat "$WORK/relay.log" >&2; fail "relay exited at start"; }
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/relay.log" | grep 'mediarelay serving' || true)
    if [ -n "$line" ]; then
        ADMIN=$(sed -n 's/.*admin=\([0-9.:]*\).*/\1/p' <<<"$line")
        break
    fi
    sleep 0.1
done
[ -n "$ADMIN" ] || { cat "$WORK/relay.log" >&2; fail "relay did not log 'mediarelay serving' within 10 s"; }
echo "relay pid $RELAY_PID, admin $ADMIN"

python3 - "$ADMIN" "$WORK/metrics.txt" <<'PY' || fail "could not fetch /metrics"
import sys, time, urllib.request
addr, out = sys.argv[1], sys.argv[2]
for _ in range(50):
    try:
        body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("no answer from /metrics")
open(out, "w").write(body)
PY

# (c) Every expression parses and names only what exists.
echo "== checking expressions"
python3 - "$WORK" "$RULES" "$DASH" <<'PY' || fail "expressions: see the FAIL lines above"
import json, os, re, subprocess, sys
import yaml

work, rules_path, dash_path = sys.argv[1:]

exposed = set()
for line in open(os.path.join(work, "metrics.txt")):
    parts = line.split()
    if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
        name, kind = parts[2], parts[3]
        exposed.add(name)
        if kind == "histogram":
            exposed.update({name + "_bucket", name + "_sum", name + "_count"})
        elif kind == "summary":
            exposed.update({name + "_sum", name + "_count"})
if not exposed:
    sys.exit("operator kit: FAILED: no '# TYPE' lines in /metrics")

rules = yaml.safe_load(open(rules_path))
recorded = set()
exprs = []  # (where, expr, must_parse)
for g in rules["groups"]:
    for r in g["rules"]:
        if "record" in r:
            recorded.add(r["record"])
        name = r.get("record") or r.get("alert")
        exprs.append((f"{rules_path}: {name}", r["expr"], True))

dash = json.load(open(dash_path))
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((f"{dash_path}: panel '{p.get('title')}' {t.get('refId')}", t["expr"], True))
        walk(p.get("panels", []))
walk(dash.get("panels", []))
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if q:  # label_values(...) is Grafana's, not PromQL: names only
        exprs.append((f"{dash_path}: variable '{v.get('name')}'", q, False))

name_re = re.compile(r"mediarelay(?:_[a-z0-9_]+|:[a-z0-9_:]+)")
string_re = re.compile(r'"(?:[^"\\]|\\.)*"')
failed = 0
for i, (where, expr, must_parse) in enumerate(exprs):
    problems = []
    # Metric names outside string literals (label values such as job="mediarelay" are not names).
    for name in sorted(set(name_re.findall(string_re.sub('""', expr)))):
        if name not in exposed and name not in recorded:
            problems.append(f"unknown metric {name}")
    if must_parse:
        f = os.path.join(work, f"expr{i}.rules.json")
        json.dump({"groups": [{"name": "check", "rules": [{"record": "check:expr", "expr": expr}]}]}, open(f, "w"))
        p = subprocess.run(["promtool", "check", "rules", f], capture_output=True, text=True)
        if p.returncode != 0:
            problems.append("does not parse: " + " ".join((p.stdout + p.stderr).split())[-300:])
    if problems:
        failed += 1
        print(f"FAIL {where}: {expr.strip()}")
        for pr in problems:
            print(f"     {pr}")
# Every alert has severity, summary, description and a runbook_url whose anchor exists.
runbook = open("docs/runbook.md").read()
anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
for g in rules["groups"]:
    for r in g["rules"]:
        if "alert" not in r:
            continue
        a, missing = r.get("annotations", {}), []
        if "severity" not in r.get("labels", {}):
            missing.append("severity label")
        missing += [k for k in ("summary", "description", "runbook_url") if k not in a]
        url = a.get("runbook_url", "")
        if url and (not url.startswith("docs/runbook.md#") or url.split("#", 1)[1] not in anchors):
            missing.append(f"runbook anchor for {url}")
        if missing:
            failed += 1
            print(f"FAIL {rules_path}: alert {r['alert']}: missing " + ", ".join(missing))
print(f"{len(exposed)} exposed series names, {len(recorded)} recording rules")
print(f"operator kit: {len(exprs)} expressions checked, {failed} failed")
sys.exit(1 if failed else 0)
PY

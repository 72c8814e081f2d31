#!/usr/bin/env python3
"""Fails when a dashboard panel or an alert rule queries a metric pixgate does not export.

Reads every PromQL expression of deploy/grafana/pixgate.json (panel targets, template variable
queries, annotation queries) and deploy/prometheus/*.rules.yaml (alert and recording rules),
extracts the metric names they select, and compares them with what pixgate exports:

    python3 deploy/check_metrics.py METRICS_DUMP        # a /metrics text scrape of a running pixgate
    python3 deploy/check_metrics.py --source src/metrics.rs

With a dump, the exported names are the sample names in it (and, for every `# TYPE` family,
its name, or `_bucket`/`_sum`/`_count` for a histogram). A labelled family only appears in a
scrape once one of its label sets has been touched, so scrape after exercising every metric.
With --source, they are the `pub const X: &str = "pixgate_..."` names of src/metrics.rs, a
histogram (built by a `histogram*` constructor in the `Metrics::new` table) exporting
`X_bucket`, `X_sum` and `X_count` instead of `X`.

`up` (Prometheus's own) and names defined by recording rules are allowed. Exit 0 when every
name is exported, 1 when not (each missing name is listed with where it is used), 2 on
unreadable input.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DASHBOARDS = [ROOT / "deploy/grafana/pixgate.json"]
DEFAULT_RULES = [ROOT / "deploy/prometheus/pixgate.rules.yaml"]

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Names that are not metrics wherever they appear outside label matchers.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "start", "end", "atan2",
}
ALWAYS_ALLOWED = {"up"}

# Grafana's built-in interval variables, replaced by a duration before parsing.
GRAFANA_INTERVALS = re.compile(r"\$(__rate_interval|__interval_ms|__interval|__range_s|__range_ms|__range)\b|\$\{(__rate_interval|__interval|__range)\}")
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\[\[[^\]]*\]\]|\$[A-Za-z_]\w*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
NAME_MATCHER = re.compile(r'__name__\s*=\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
TOKEN = re.compile(
    r"(?P<duration>\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y))(?![a-zA-Z0-9_:])"
    r"|(?P<number>0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)"
)


def metric_names(expr):
    """Metric names selected by one PromQL expression."""
    expr = GRAFANA_INTERVALS.sub("5m", expr)
    expr = GRAFANA_VARIABLE.sub("x", expr)
    names = set(NAME_MATCHER.findall(expr))
    expr = STRING.sub('""', expr)
    # Label matchers, then range and subquery selectors.
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    # Label lists of aggregations and vector matching (`sum by (route)`, `on (job)`).
    # Removed with their keyword, so that `sum by (route) (x)` reads as the call `sum (x)`.
    expr = LABEL_LIST.sub(" ", expr)
    for m in TOKEN.finditer(expr):
        ident = m.group("ident")
        if ident is None:
            continue
        rest = expr[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation operator
        if ident.lower() in KEYWORDS:
            continue
        names.add(ident)
    return names


def template_query_exprs(query):
    """PromQL inside a Grafana Prometheus template-variable query."""
    q = query.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_]\w*\s*\)", q, re.S)
    if m:
        return [m.group(1)]
    if re.fullmatch(r"label_values\(\s*[a-zA-Z_]\w*\s*\)", q):
        return []
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return [m.group(1)]
    if re.fullmatch(r"(label_names|metrics)\(.*\)", q, re.S):
        return []
    return [q] if q else []


def dashboard_exprs(path):
    """(where, expr) for every query of a Grafana dashboard."""
    dash = json.loads(path.read_text())
    out = []

    def walk(panels, parent=""):
        for p in panels or []:
            title = p.get("title") or f"panel {p.get('id')}"
            where = f"{path.name}: panel '{parent}{title}'"
            for t in p.get("targets") or []:
                if isinstance(t, dict) and t.get("expr"):
                    out.append((f"{where} ref {t.get('refId', '?')}", t["expr"]))
            walk(p.get("panels"), parent=f"{title} / " if p.get("type") == "row" else parent)

    walk(dash.get("panels"))
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        for e in template_query_exprs(q or ""):
            out.append((f"{path.name}: variable '{v.get('name')}'", e))
    for a in (dash.get("annotations") or {}).get("list") or []:
        e = a.get("expr") or (a.get("target") or {}).get("expr")
        if e:
            out.append((f"{path.name}: annotation '{a.get('name')}'", e))
    return out


def rules_exprs(path):
    """(where, expr) for every rule, and the names recording rules define."""
    doc = yaml.safe_load(path.read_text()) or {}
    out, recorded = [], set()
    for g in doc.get("groups") or []:
        for r in g.get("rules") or []:
            name = r.get("alert") or r.get("record")
            out.append((f"{path.name}: group '{g.get('name')}' rule '{name}'", str(r.get("expr", ""))))
            if r.get("record"):
                recorded.add(r["record"])
    return out, recorded


def exported_from_dump(path):
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                name, kind = parts[2], parts[3]
                if kind in ("histogram", "summary"):
                    names.update(name + s for s in HISTOGRAM_SUFFIXES)
                    if kind == "summary":
                        names.add(name)
                else:
                    names.add(name)
            continue
        m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if m:
            names.add(m.group(0))
    return names


def _top_level_items(body):
    """Splits `a: f(x, y), b: g(z),` at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    return [s.strip() for s in items if s.strip()]


def exported_from_source(path):
    """{name: kind} from src/metrics.rs; kind is `histogram` or `other`."""
    text = path.read_text()
    text_nc = re.sub(r"//[^\n]*", "", text)
    consts = dict(re.findall(r'pub\s+const\s+([A-Z][A-Z0-9_]*)\s*:\s*&str\s*=\s*"(pixgate_[a-z0-9_:]+)"\s*;', text_nc))
    if not consts:
        raise ValueError(f"{path}: no `pub const X: &str = \"pixgate_...\"` lines")
    m = re.search(r"fn\s+new\s*\([^)]*\)[^{]*\{.*?Metrics\s*\{", text_nc, re.S)
    if not m:
        raise ValueError(f"{path}: no `Metrics {{ ... }}` table in `fn new`")
    depth, i = 1, m.end()
    while i < len(text_nc) and depth:
        depth += {"{": 1, "}": -1}.get(text_nc[i], 0)
        i += 1
    table = text_nc[m.end():i - 1]
    kinds = {}
    for item in _top_level_items(table):
        for ident in re.findall(r"\b[A-Z][A-Z0-9_]*\b", item):
            if ident in consts:
                kinds[consts[ident]] = "histogram" if re.search(r"histogram", item, re.I) else "other"
    untyped = sorted(n for n in consts.values() if n not in kinds)
    if untyped:
        raise ValueError(f"{path}: declared but not built in the Metrics::new table (kind unknown): {', '.join(untyped)}")
    return kinds


def expand(kinds):
    names = set()
    for name, kind in kinds.items():
        if kind == "histogram":
            names.update(name + s for s in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("dump", nargs="?", type=Path, help="a /metrics text dump of a running pixgate")
    src.add_argument("--source", type=Path, help="src/metrics.rs")
    ap.add_argument("--dashboard", type=Path, action="append", help="Grafana dashboard JSON (default: deploy/grafana/pixgate.json)")
    ap.add_argument("--rules", type=Path, action="append", help="Prometheus rules YAML (default: deploy/prometheus/pixgate.rules.yaml)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every name used and where")
    args = ap.parse_args()

    try:
        if args.source:
            exported = expand(exported_from_source(args.source))
            origin = str(args.source)
        else:
            exported = exported_from_dump(args.dump)
            origin = str(args.dump)
        uses = []
        recorded = set()
        for d in args.dashboard or DEFAULT_DASHBOARDS:
            uses += dashboard_exprs(d)
        for r in args.rules or DEFAULT_RULES:
            u, rec = rules_exprs(r)
            uses += u
            recorded |= rec
    except (OSError, ValueError, json.JSONDecodeError, yaml.YAMLError) as e:
        print(f"check_metrics: {e}", file=sys.stderr)
        return 2

    used = {}
    for where, expr in uses:
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    if not used:
        print("check_metrics: no metric names found in any expression", file=sys.stderr)
        return 2

    missing = {}
    for name, wheres in sorted(used.items()):
        if name in ALWAYS_ALLOWED or name in recorded or name in exported:
            status = "ok"
        else:
            status = "NOT EXPORTED"
            missing[name] = wheres
        if args.verbose:
            print(f"{status:20} {name}  ({len(wheres)} uses)")
    if args.verbose:
        unused = sorted(n for n in exported if n not in used)
        if unused:
            print(f"exported but used by no panel or rule: {', '.join(unused)}")
    if missing:
        print(f"FAIL: {len(missing)} metric name(s) queried but not exported by pixgate ({origin}):")
        for name, wheres in missing.items():
            print(f"  {name}")
            for w in sorted(set(wheres)):
                print(f"    used in {w}")
        return 1
    print(f"ok: {len(used)} metric names in {len(uses)} expressions, all exported ({origin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

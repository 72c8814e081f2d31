#!/usr/bin/env python3
"""Code shape of src/: the largest files and functions, and import cycles between files.

    python3 .ci/shape.py [--check] [--max-fn 80] [--top 15]

Functions are counted from their `fn` line to the closing brace, test modules
(`#[cfg(test)] mod …`) excluded. An import edge A -> B exists when a file of module A names
`crate::B…` (or `super::…` resolving to B) outside its test module. Edges from a module to its
own descendants are ignored (a parent re-exports its children); cycles are the strongly
connected components left. `--check` exits 1 when a function is longer than --max-fn or a
cycle exists (the rules docs/architecture.md states).
"""
import argparse
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def strip(text):
    """Blank out comments, strings and char literals, keeping line structure."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\.|\\x[0-9a-fA-F]{2}|\\u\{[0-9a-fA-F]+\}|[^\\'])'", text[i:i + 12])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block_end(lines, start):
    """Index of the line closing the first `{` at or after `start` (None for `;` items)."""
    depth, opened = 0, False
    for k in range(start, len(lines)):
        for ch in lines[k]:
            if ch == "{":
                depth, opened = depth + 1, True
            elif ch == "}":
                depth -= 1
                if opened and depth == 0:
                    return k
            elif ch == ";" and not opened and depth == 0:
                return None
    return None


def test_ranges(lines):
    ranges = []
    for k, line in enumerate(lines):
        if re.match(r"\s*#\[cfg\(test\)\]", line):
            for j in range(k + 1, min(k + 3, len(lines))):
                if re.match(r"\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", lines[j]):
                    end = block_end(lines, j)
                    if end is not None:
                        ranges.append((k, end))
                    break
    return ranges


FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\S+\s+)?fn\s+(\w+)")


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def files():
    for root, _, names in os.walk(SRC):
        for name in sorted(names):
            if name.endswith(".rs"):
                yield os.path.join(root, name)


def analyse():
    mods = {}
    fns = []
    sizes = []
    raw_edges = {}
    for path in files():
        mod = module_of(path)
        if mod == ("main",) or os.path.basename(path) == "main.rs":
            mod = ("<bin>",)
        text = open(path, encoding="utf-8").read()
        lines = strip(text).split("\n")
        tests = test_ranges(lines)
        in_test = lambda k: any(a <= k <= b for a, b in tests)
        code_lines = sum(1 for k in range(len(lines)) if not in_test(k))
        sizes.append((code_lines, len(lines), os.path.relpath(path, SRC)))
        mods[mod] = path
        for k, line in enumerate(lines):
            if in_test(k):
                continue
            m = FN.match(line)
            if m:
                end = block_end(lines, k)
                if end is not None:
                    fns.append((end - k + 1, f"{os.path.relpath(path, SRC)}:{k + 1}", m.group(7)))
        refs = set()
        for k, line in enumerate(lines):
            if in_test(k):
                continue
            for m in re.finditer(r"\bcrate::((?:\w+::)*\w+)", line):
                refs.add(tuple(m.group(1).split("::")))
            for m in re.finditer(r"\b((?:super::)+)((?:\w+::)*\w+)", line):
                ups = m.group(1).count("super")
                is_mod_file = os.path.basename(path) in ("mod.rs", "lib.rs")
                base = list(mod)
                # `super` of a file module a/b.rs is a; of a/b/mod.rs is a as well.
                base = base[: len(base) - ups] if True else base
                if is_mod_file:
                    base = list(mod)[: len(mod) - ups]
                refs.add(tuple(base) + tuple(m.group(2).split("::")))
        raw_edges[mod] = refs
    known = set(mods)
    edges = {}
    for mod, refs in raw_edges.items():
        targets = set()
        for ref in refs:
            for cut in range(len(ref), 0, -1):
                if ref[:cut] in known:
                    target = ref[:cut]
                    break
            else:
                continue
            if target == mod or target[: len(mod)] == mod:
                continue  # self, or a parent using its own children
            targets.add(target)
        edges[mod] = targets
    return sizes, fns, edges


def sccs(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "::".join(mod) or "crate"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--max-fn", type=int, default=80)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    sizes, fns, edges = analyse()
    sizes.sort(reverse=True)
    fns.sort(reverse=True)
    print(f"largest files (lines outside tests / total), of {len(sizes)}:")
    for code, total, path in sizes[: args.top]:
        print(f"  {code:5} / {total:5}  {path}")
    print(f"largest functions, outside tests ({sum(1 for f in fns if f[0] > args.max_fn)} over {args.max_fn} lines):")
    for length, where, fname in fns[: args.top]:
        print(f"  {length:5}  {fname}  {where}")
    cycles = sccs(edges)
    print(f"import cycles between files: {len(cycles)}")
    for comp in cycles:
        inner = {m: sorted(name(t) for t in edges[m] if t in comp) for m in comp}
        print(f"  {len(comp)} modules: " + ", ".join(name(m) for m in comp))
        for m in comp:
            print(f"    {name(m)} -> {', '.join(inner[m])}")
    if args.check:
        long_fns = [f for f in fns if f[0] > args.max_fn]
        if long_fns or cycles:
            sys.exit(1)


if __name__ == "__main__":
    main()

"""Extract Megatron-LM's command-line flags (name, argparse group, number of values) as data.

    python tools/megatron_flags.py /path/to/Megatron-LM              # rewrites the shipped list
    python tools/megatron_flags.py /path/to/Megatron-LM --out x.tsv

Megatron's parser is read as source, by AST, never imported: `megatron/training/arguments.py`
adds most flags with `group.add_argument(...)` and generates the rest from config dataclasses
with `ArgumentGroupFactory(Cls, exclude=[...]).build_group(parser, title)`. For those, the
dataclass is parsed too and Megatron's naming rules applied: one flag `--field-name` per field
(not excluded, not `init=False`); a bool defaulting to anything but False becomes
`--no-field-name` and `--disable-field-name`; `metadata={"argparse_meta": {...}}` overrides
names, nargs and action. Flags inside `if HAVE_<package>:` blocks (optional NVIDIA packages)
are listed too, so a user of those packages gets an answer.

The output (megaclap/config/megatron_flags.tsv) is `flag<TAB>group<TAB>nargs<TAB>alias of` per
option string: nargs is 0 (a switch), 1, N, ?, * or +; `alias of` names the first flag of the same
argparse action (empty for that first flag). Header lines name the Megatron commit.
"""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "megaclap", "config", "megatron_flags.tsv")
ARGUMENTS = "megatron/training/arguments.py"
ZERO_ARG_ACTIONS = {"store_true", "store_false", "store_const", "count", "help", "version"}


def _parse(path: str) -> ast.Module:
    with open(path) as f:
        return ast.parse(f.read(), filename=path)


def dataclass_index(root: str) -> dict:
    """{class name: ClassDef} for every class under megatron/ (later duplicates are dropped)."""
    index: dict = {}
    for folder, _, files in os.walk(os.path.join(root, "megatron")):
        for name in sorted(files):
            if name.endswith(".py"):
                for node in _parse(os.path.join(folder, name)).body:
                    if isinstance(node, ast.ClassDef):
                        index.setdefault(node.name, node)
    return index


def _const(node, default=None):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return default


def _kwargs(call: ast.Call) -> dict:
    return {k.arg: k.value for k in call.keywords if k.arg}


def _nargs(action, nargs) -> str:
    """The number of values of an argparse flag, as written in the list."""
    if action in ZERO_ARG_ACTIONS:
        return "0"
    return str(nargs) if nargs is not None else "1"


def _annotation_kind(ann) -> str:
    """'bool', 'list' or 'value' for a dataclass field annotation (Optional[...] unwrapped)."""
    text = ast.unparse(ann).replace(" ", "")
    for wrapper in ("Optional[", "typing.Optional["):
        if text.startswith(wrapper):
            text = text[len(wrapper):-1]
    text = text.removesuffix("|None").removeprefix("None|")
    if text == "bool":
        return "bool"
    if text.lower().startswith(("list[", "typing.list[")):
        return "list"
    return "value"


def _field_call(value):
    if isinstance(value, ast.Call) and ast.unparse(value.func) in ("field", "dataclasses.field"):
        return _kwargs(value)
    return None


def factory_flags(cls: ast.ClassDef, index: dict, exclude: set) -> list:
    """[(flag, nargs, first name)] that ArgumentGroupFactory(cls, exclude) adds (bases first)."""
    fields: dict = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in index:
            for name, spec in _dataclass_fields(index[base.id]).items():
                fields.setdefault(name, spec)
    fields.update(_dataclass_fields(cls))
    out = []
    for name, (ann, value) in fields.items():
        kw = _field_call(value)
        if name in exclude or (kw and _const(kw.get("init"), True) is False):
            continue
        if kw:
            default = _const(kw["default"]) if "default" in kw else None
        else:
            default = _const(value)
        meta = {}
        if kw and isinstance(kw.get("metadata"), ast.Dict):
            meta = _argparse_meta(kw["metadata"])
        kind = _annotation_kind(ann)
        names = ["--" + name.replace("_", "-")]
        action = nargs = None
        if kind == "bool":
            action = "store_true" if default is False else "store_false"
            if action == "store_false":
                names = ["--no-" + name.replace("_", "-"), "--disable-" + name.replace("_", "-")]
        elif kind == "list":
            nargs = "+"
        names = meta.get("arg_names", names)
        action, nargs = meta.get("action", action), meta.get("nargs", nargs)
        out += [(n, _nargs(action, nargs), names[0]) for n in names]
    return out


def _dataclass_fields(cls: ast.ClassDef) -> dict:
    return {n.target.id: (n.annotation, n.value) for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and "ClassVar" not in ast.unparse(n.annotation)}


def _argparse_meta(node: ast.Dict) -> dict:
    """The literal parts of metadata['argparse_meta'] (names, nargs, action)."""
    for k, v in zip(node.keys, node.values):
        if _const(k) == "argparse_meta" and isinstance(v, ast.Dict):
            meta = {}
            for mk, mv in zip(v.keys, v.values):
                key = _const(mk)
                if key in ("arg_names", "nargs", "action"):
                    meta[key] = _const(mv, ast.unparse(mv))
            return meta
    return {}


def extract(root: str) -> list:
    """[(flag, group, nargs, the action's first flag)] in the order Megatron's parser adds them."""
    index = dataclass_index(root)
    rows = []
    for func in _parse(os.path.join(root, ARGUMENTS)).body:
        if isinstance(func, ast.FunctionDef) and func.name.startswith("_add_"):
            rows += _function_flags(func, index)
    return rows


def _function_flags(func: ast.FunctionDef, index: dict) -> list:
    groups, factories, rows = {}, {}, []
    for node in ast.walk(func):   # assignments first: a group is created before it is used
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and len(node.targets) == 1):
            target, call = ast.unparse(node.targets[0]), node.value
            attr = getattr(call.func, "attr", getattr(call.func, "id", ""))
            if attr == "add_argument_group":
                groups[target] = _const(_kwargs(call).get("title") or call.args[0])
            elif attr == "build_group":
                groups[target] = _const(_kwargs(call).get("title") or call.args[1])
            elif attr == "add_mutually_exclusive_group":
                groups[target] = groups.get(ast.unparse(call.func.value))
            elif attr == "ArgumentGroupFactory":
                factories[target] = call
    calls = sorted((n for n in ast.walk(func) if isinstance(n, ast.Call)), key=lambda n: n.lineno)
    for node in calls:
        attr = getattr(node.func, "attr", "")
        if attr == "add_argument":
            kw = _kwargs(node)
            group = groups.get(ast.unparse(node.func.value), "(no group)")
            action = ast.unparse(kw["action"]) if "action" in kw else None
            names = [_const(a) for a in node.args if isinstance(_const(a), str)]
            firsts = [names[0]] * len(names)
            if action == "argparse.BooleanOptionalAction":   # --x and --no-x (its opposite): switches
                negated = ["--no-" + n[2:] for n in names]
                names, firsts = names + negated, firsts + [negated[0]] * len(negated)
                action = "store_true"
            nargs = _nargs(_const(kw.get("action"), action),
                           _const(kw["nargs"]) if "nargs" in kw else None)
            rows += [(n, group, nargs, first) for n, first in zip(names, firsts)]
        elif attr == "build_group":
            receiver = node.func.value
            call = receiver if isinstance(receiver, ast.Call) else factories[ast.unparse(receiver)]
            title = _const(_kwargs(node).get("title") or node.args[1])
            exclude = set(_const(_kwargs(call).get("exclude"), None) or [])
            if not exclude and "exclude" in _kwargs(call):   # exclude=<a local list variable>
                exclude = _local_list(func, ast.unparse(_kwargs(call)["exclude"]))
            fields = factory_flags(index[call.args[0].id], index, exclude)
            rows += [(flag, title, nargs, first) for flag, nargs, first in fields]
    return rows


def _local_list(func: ast.FunctionDef, name: str) -> set:
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == name:
            return set(_const(node.value, []))
    return set()


def _describe(root: str) -> str:
    def git(*args):
        r = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "unknown"
    version = "unknown"
    info = os.path.join(root, "megatron", "core", "package_info.py")
    if os.path.isfile(info):
        parts = {t.targets[0].id: _const(t.value) for t in _parse(info).body
                 if isinstance(t, ast.Assign) and isinstance(t.targets[0], ast.Name)}
        version = (f"{parts.get('MAJOR')}.{parts.get('MINOR')}.{parts.get('PATCH')}"
                   f"{parts.get('PRE_RELEASE', '')}")
    commit, date = git("rev-parse", "HEAD"), git("log", "-1", "--format=%cs")
    return f"NVIDIA/Megatron-LM {commit} ({date}), megatron.core {version}"


def write(rows: list, source: str, out: str) -> None:
    """Write the list atomically (temp file + rename)."""
    head = ["# Megatron-LM's command-line flags: flag, argparse group, number of values "
            "(0: a switch),",
            "# and the flag it is an alternative spelling of (empty for an action's first flag).",
            f"# Read from {source}",
            "# Regenerate: python tools/megatron_flags.py /path/to/Megatron-LM   "
            "(AST only; nothing imported)"]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        lines = ["\t".join(r[:3] + ("" if r[3] == r[0] else r[3],)) for r in rows]
        f.write("\n".join(head + lines) + "\n")
    os.replace(tmp, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("megatron_root", help="a Megatron-LM checkout (its megatron/ folder is read)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.megatron_root, ARGUMENTS)):
        print(f"megatron_flags: {args.megatron_root} has no {ARGUMENTS}", file=sys.stderr)
        return 2
    rows = extract(args.megatron_root)
    write(rows, _describe(args.megatron_root), args.out)
    print(f"{len(rows)} option strings in {len({r[1] for r in rows})} groups -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

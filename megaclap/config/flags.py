"""argparse flags generated from config dataclasses: one flag per field, its docstring as help.

Every section (model, parallel, optim, train, data, compression) goes through `add_dataclass_args`,
so a default is written once (the dataclass) and `--help` describes every flag. A field's
docstring is the string literal right after it (`x: int = 1` then `\"\"\"--x: what it does.\"\"\"`);
a leading `--flag:` is dropped from the help text. Field `metadata` carries what cannot be
inferred from the type:

    flag      the flag name when it is not `--` + name with `-` for `_` (e.g. --pp-fwd-codec)
    aliases   further spellings of the flag (e.g. Megatron-LM's current and older names)
    nargs     argparse nargs (e.g. 3 for --rampup-batch-size START INCR SAMPLES)
    choices   allowed values, checked by argparse and listed in --help
    metavar   the value's name in --help
    required  True: must be given on the command line (the dataclass keeps a default for
              library use, see docs/DECISIONS.md "Megatron-LM habits")
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict:
    """{field name: docstring} read from the class source (docstrings are not kept at run time)."""
    docs: dict = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def help_text(cls, f: dataclasses.Field) -> str:
    """The field's docstring without its leading '--flag:' (empty when undocumented)."""
    doc = field_docs(cls).get(f.name, "")
    flag = flag_name(f)
    for lead in (flag + ":", flag + "."):
        if doc.startswith(lead):
            doc = doc[len(lead):].strip()
    return doc


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (list, typing.List):
        return list, (typing.get_args(hint) or (str,))[0]
    if args and typing.get_origin(hint) is typing.Union:
        return _base_type(args[0])
    return hint, None


def _shown(value) -> str:
    if value is None or value is False or value == []:
        return ""
    return f" (default: {' '.join(map(str, value)) if isinstance(value, list) else value})"


def add_dataclass_args(parser: argparse.ArgumentParser, cls, title: str):
    """Add one flag per field of dataclass `cls` to a new argument group; returns the group.

    Every flag's dest is the field name and its default is argparse.SUPPRESS, so the parsed
    namespace holds only the flags actually given (see `given_fields`)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title, (cls.__doc__ or "").strip().splitlines()[0])
    for f in dataclasses.fields(cls):
        meta, default = f.metadata, _default(f)
        typ, item = _base_type(hints[f.name])
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text(cls, f))
        if typ is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            kwargs["type"] = item if typ is list else typ
            if typ is list:
                kwargs["nargs"] = meta.get("nargs", "*")
            elif "nargs" in meta:
                kwargs["nargs"] = meta["nargs"]
            for key in ("choices", "metavar"):
                if key in meta:
                    kwargs[key] = meta[key]
            kwargs["help"] += " (required)" if meta.get("required") else _shown(default)
        kwargs["help"] = kwargs["help"].replace("%", "%%")   # argparse formats help with %
        group.add_argument(flag_name(f), *meta.get("aliases", ()), **kwargs)
    return group


def given_fields(cls, ns: argparse.Namespace) -> dict:
    """{field: value} of the flags of `cls` that are present in the namespace."""
    return {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}


def from_namespace(cls, ns: argparse.Namespace):
    """An instance of `cls` with the given flags set and every other field at its default."""
    return cls(**given_fields(cls, ns))


def missing_required(cls, ns: argparse.Namespace) -> list:
    """Flags of `cls` marked required that the command line did not give."""
    return [flag_name(f) for f in dataclasses.fields(cls) if f.metadata.get("required") and not hasattr(ns, f.name)]

"""The WAN speedrun's markdown: one table per target, then the winner per link and where
Clapping pays (plain sentences from the verdicts of bench/stats.py)."""
from __future__ import annotations

import os


def _iv(x: dict, fmt: str = "{:.0f}", unit: str = "") -> str:
    """'123 [118, 128]' (mean and 95% interval), or the mean alone for one seed."""
    if x is None:
        return "not reached"
    mean = fmt.format(x["mean"]) + unit
    if x["lo"] is None:
        return mean
    return f"{mean} [{fmt.format(x['lo'])}, {fmt.format(x['hi'])}]"


def _err(e: dict) -> str:
    f = "-" if e["fresh"] is None else f"{e['fresh']:.3f}"
    r = "-" if e["repeat"] is None else f"{e['repeat']:.3f}"
    return f"{f} / {r}"


def _step_ms(s: dict) -> str:
    rep = "" if s["repeat"] is None else f" / {s['repeat'] * 1e3:.0f}"
    return f"{s['fresh'] * 1e3:.0f}{rep}" + ("" if s["steady"] else "*")


def table(result: dict, target: str) -> list:
    links = list(result["links"])
    head = ("| config | group | p | B/token fwd / bwd | rel err fwd (fresh / rep) "
            "| rel err bwd (fresh / rep) | schedule | seeds reached | steps to target | fitted (diag.) |")
    for link in links:
        head += f" {link}: step ms (fresh / rep) | {link}: T s | {link}: T / dense | {link}: verdict |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        res = r["targets"][target]
        fitted = [f for f in res["fitted_steps"] if f is not None]
        cells = [r["name"], r["group"], "1" if r["p"] is None else f"{r['p']:g}",
                 f"{r['bytes_per_token']['fwd']:.1f} / {r['bytes_per_token']['bwd']:.1f}",
                 _err(r["rel_err"]["fwd"]), _err(r["rel_err"]["bwd"]), f"{res['factor']:g}x",
                 f"{res['reached']}/{len(res['seeds'])}", _iv(res["steps"], "{:.1f}"),
                 f"{sum(fitted) / len(fitted):.1f}" if fitted else "-"]
        for link in links:
            ratio = res["T_ratio"][link]
            cells += [_step_ms(res["step_s"][link]), _iv(res["T"][link], "{:.2f}"),
                      "-" if ratio is None else f"{ratio:.3f}", res["verdict"][link]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sentences(result: dict, target: str) -> list:
    """The winner per link, and the best Clapping configuration's verdict against dense."""
    out = []
    for link, (bw, lat) in result["links"].items():
        rows = [r for r in result["rows"] if r["targets"][target]["T"][link]]
        if not rows:
            continue
        best = min(rows, key=lambda r: r["targets"][target]["T"][link]["mean"])
        res = best["targets"][target]
        t = _iv(res["T"][link], "{:.2f}", " s")
        line = (f"{link} link ({bw}, {lat}): lowest mean T {best['name']} ({t}, "
                f"{res['T_ratio'][link]:.3f}x dense: {res['verdict'][link]})")
        clap = [r for r in rows if r["method"].startswith("clapping")]
        if clap:
            c = min(clap, key=lambda r: r["targets"][target]["T"][link]["mean"])
            cr = c["targets"][target]
            line += (f"; best Clapping {c['name']} {cr['T_ratio'][link]:.3f}x dense: Clapping "
                     f"{cr['verdict'][link]} vs dense")
        out.append(line)
    return out


def markdown(result: dict) -> list:
    dense = next(r for r in result["rows"] if r["name"] == "dense")
    speed = f"dense run: {dense['tokens_per_s']:.0f} tokens/s"
    if dense["tflops"] is not None:
        speed += f", {dense['tflops']:.3g} TFLOP/s per device"
    if dense["mfu"] is not None:
        speed += f", MFU {dense['mfu']:.1%}"
    lines = [f"Scale: {result['scale']}; {len(result['seeds'])} seeds (more near the best); validation "
             f"{result['valid_tokens']} tokens, the same at every evaluation; {speed} (no link)."]
    for target, loss in result["targets"].items():
        what = (f"dense loss at {result['target_fraction']:.0%} of its schedule" if target == "end"
                else "dense final loss")
        lines += ["", f"### Target {target}: validation loss {loss:.4f} ({what})", "",
                  *table(result, target), ""]
        lines += [f"- {s}" for s in sentences(result, target)]
    lines += ["", "Intervals: 95%, Student's t over seeds. Step times marked * did not reach the "
              "steady-state rule (three consecutive windows within the tolerance). Verdicts compare T "
              "with dense (bf16 wire) on the same link: 'pays' / 'does not pay' only where the "
              "intervals separate."]
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{n} ({why})" for n, why in result["skipped"].items())]
    return lines


def write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)

"""The table ``sqsam bench`` prints: one line per measurement, the SAM baseline and the targets."""

from __future__ import annotations


def _f(value, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"sqsam bench ({report['mode']}) {report['date_utc']}",
        f"machine: {m['cpu_model']}, {m['usable_cores']} usable cores ({m['physical_cores'] or '?'} physical), "
        f"{m['memory_gb'] or '?'} GB; onnxruntime {m['onnxruntime']}, numpy {m['numpy']} ({m['blas'] or 'BLAS ?'}); "
        f"load avg {m['loadavg_start']} -> {m.get('loadavg_end')}",
    ]
    mod = report["model"]
    lines.append(f"model: {mod['model_version']} ({mod['file_mb']} MB, input {mod['input_size']}, "
                 f"{mod['num_masks']} masks, stride {mod['stride']}), ORT threads: {mod['ort_threads']}, "
                 f"load {mod['load_ms']:.0f} ms")
    rows: list[tuple[str, str, str, str]] = []
    pc = report["per_click"]
    rows.append((f"per click, cached {pc['image']['width']}x{pc['image']['height']} image ({pc['clicks']} clicks)",
                 _f(pc["p50_ms"]), _f(pc["p95_ms"]),
                 f"model {_f(pc['model_only']['p50_ms'])} + pre/post {_f(pc['pre_post_p50_ms'])}"))
    for fc in report["first_click"]:
        rows.append((f"first click, new {fc['label']} JPEG ({fc['n']}x)", _f(fc["p50_ms"]), _f(fc["p95_ms"]),
                     f"decode {_f(fc['decode_p50_ms'])} + prepare {_f(fc['prepare_p50_ms'])} + "
                     f"predict {_f(fc['predict_p50_ms'])} (model {_f(fc['model_p50_ms'])})"))
    am = report["automask"]
    rows.append((f"automask per {am['image']['width']}x{am['image']['height']} image ({am['n']}x)", _f(am["p50_ms"]),
                 _f(am["p95_ms"]), f"{am['model_passes_mean']:.1f} model passes, {am['objects_mean']:.1f} objects"))
    ls = report.get("label_studio", {})
    if ls.get("status") == "ok":
        it, bt = ls["interactive"], ls["batch"]
        rows.append((f"Label Studio /predict interactive ({it['n']}x)", _f(it["p50_ms"]), _f(it["p95_ms"]),
                     f"server {_f(it['server_p50_ms'])}"))
        rows.append((f"Label Studio batch pre-annotation, {bt['tasks_per_request']} tasks ({bt['n']}x)",
                     _f(bt["p50_ms"]), _f(bt["p95_ms"]), f"{_f(bt['per_task_p50_ms'])} ms/task"))
    width = max(len(r[0]) for r in rows)
    lines.append("")
    lines.append(f"{'latency':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  breakdown (p50 ms)")
    for name, p50, p95, note in rows:
        lines.append(f"{name:<{width}}  {p50:>8}  {p95:>8}  {note}")
    if ls.get("status") != "ok":
        lines.append(f"Label Studio: {ls.get('status')} ({ls.get('reason')})")

    lines.append("")
    for tp in report["throughput"]:
        lines.append(f"throughput, decode + automask: {tp['workers']} worker(s) x {tp['ort_threads_per_worker']} ORT "
                     f"thread(s): {tp['images_per_s']:.2f} images/s ({tp['images']} images)")
    fl, peak = report.get("flops", {}), report["peak"]
    share = 100 * pc["fraction_of_peak"] if pc.get("fraction_of_peak") is not None else None
    if fl.get("macs"):
        lines.append(f"model cost: {fl['gflops']:.2f} GFLOPs/pass ({fl['macs'] / 1e9:.2f} GMACs); machine peak "
                     f"{peak['gflops']:.1f} GFLOP/s (numpy sgemm n={peak['n']}); achieved "
                     f"{_f(pc.get('achieved_gflops'))} GFLOP/s = {_f(share)}% of peak")
    mem = report["memory"]
    lines.append(f"peak RSS: {mem['peak_rss_mb']} MB (model loaded: {mod['rss_after_load_mb']} MB)")
    prof = report.get("profile")
    if prof and prof.get("ops"):
        ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in prof["ops"][:6])
        lines.append(f"model pass by op (ORT profile, {prof['kernel_ms_per_pass']} ms kernels): {ops}")

    sam = report.get("sam_baseline", {})
    lines.append("")
    if sam.get("status") == "ok":
        ours = sam["ours"]
        lines.append(f"SAM baseline at {sam['image']['width']}x{sam['image']['height']}, {sam['threads']} ORT threads "
                     f"(random weights, speed only)")
        lines.append(f"{'model (ms)':<28}  {'first click':>11}  {'per click':>9}  {'5 clicks':>9}  cost")
        lines.append(f"{'sqsam ' + mod['model_version']:<28}  {ours['first_click_ms']:>11.1f}  "
                     f"{ours['per_click_ms']:>9.1f}  "
                     f"{ours['five_click_ms']:>9.1f}  {_f(fl.get('gflops'), '{:.2f}')} GFLOP per pass")
        for name, res in sam["variants"].items():
            if res.get("status") != "ok":
                lines.append(f"{name:<28}  {res.get('status')}: {res.get('reason')}")
                continue
            r = sam["ratios"][name]
            enc_gf = 2 * res["encoder_gmacs"] if res.get("encoder_gmacs") is not None else None
            dec_gf = 2 * res["decoder_gmacs"] if res.get("decoder_gmacs") is not None else None
            lines.append(f"{name:<28}  {res['first_click_ms']:>11.1f}  {res['per_click_ms']:>9.1f}  "
                         f"{res['five_click_ms']:>9.1f}  encoder {res['encoder']['p50_ms']:.0f} ms / "
                         f"{_f(enc_gf, '{:.1f}')}, decoder {_f(dec_gf, '{:.2f}')} GFLOP")
            lines.append(f"{'  ratio (theirs / ours)':<28}  {_f(r['first_click'], '{:.1f}x'):>11}  "
                         f"{_f(r['per_click'], '{:.1f}x'):>9}  {_f(r['five_click'], '{:.1f}x'):>9}")
    else:
        lines.append(f"SAM baseline: {sam.get('status', 'skipped')} ({sam.get('reason')})")

    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"  {t['description']:<42} {_f(t['value'], '{:.1f}'):>8}  target {t['target']:<8} {verdict}")
    lines.append(f"({report['seconds']:.0f} s)")
    return "\n".join(lines)


"""``MODEL_CARD.md``: the export record (``export.json``) in words, for the person who ships the model."""

from __future__ import annotations

from typing import Any


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _model(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    kw = ", ".join(f"{k}={v}" for k, v in (m.get("kwargs") or {k: v for k, v in m.items() if k != "name"}).items())
    return f"`{m.get('name')}`({kw})"


def _lat(r: dict[str, Any], batch: int) -> str:
    lat = (r.get("latency") or {}).get(f"batch_{batch}")
    return "-" if not lat else f"{lat['p50_ms']:.3f} / {lat['p95_ms']:.3f}"


def model_card(record: dict[str, Any]) -> str:
    """The model card of one export."""
    student, teacher, method, data = record["student"], record["teacher"], record["method"], record["data"]
    spec = student["model_spec"]
    lines = [f"# Model card: {spec['name']} student ({record['export_format']})", ""]
    lines += ["## What it is", "",
              f"- Student: {_model(spec)}, {student['params']:,} parameters, {spec['num_classes']} classes, "
              f"input {tuple(spec['in_shape'])}.",
              f"- Exported from: `{record['checkpoint']}`" + (f" (run `{record['run_dir']}`)" if record["run_dir"] else "")
              + "."]
    if record.get("hf_pretrained"):
        lines.append(f"- Hugging Face format: `{record['hf_pretrained']}` (save_pretrained, with its image processor: "
                     "`AutoModelForImageClassification.from_pretrained(DIR)`; inputs as the processor prepares them).")
    if teacher:
        where = f", from `{teacher['checkpoint']}`" if teacher.get("checkpoint") else ""
        lines.append(f"- Teacher: {_model(teacher.get('model'))}{where}; test accuracy {_pct(teacher.get('test_acc'))}.")
    else:
        lines.append("- Teacher: not recorded (a checkpoint outside a run directory, or a run without a teacher).")
    if method:
        if method["distilled"]:
            how = ", ".join(f"{k} {method[k]}" for k in ("loss", "method", "temperature", "alpha") if method.get(k) is not None)
            opts = f"; options {method['options']}" if method.get("options") else ""
            lines.append(f"- Method: recipe `{method['recipe']}`, model `{method['model_in_run']}`: {how}{opts}.")
        else:
            lines.append(f"- Method: the `{method['model_in_run']}` of a `{method['recipe']}` run (trained on labels, "
                         "not distilled).")
        if method.get("run_test_acc") is not None:
            lines.append(f"- The run reported test accuracy {_pct(method['run_test_acc'])} for this model.")
    rec = data["record"]
    lines += ["", "## Data", "",
              f"- Dataset `{data['name']}`, test split of {data['test_examples']} examples "
              f"(sha256 of inputs and labels `{data['test_sha256'][:16]}...`).",
              f"- Checkpoint's data record: split_seed {rec.get('split_seed')}, {rec.get('num_classes')} classes.",
              f"- Inputs: `{record['input']['name']}`, float32 of shape (batch, {', '.join(map(str, spec['in_shape']))}), "
              f"normalized per channel as `(x - mean) / std` with mean {rec.get('mean')} and std {rec.get('std')}; "
              f"output `{record['input']['output']}` (unnormalized log-probabilities).",
              ]
    if data.get("calibration"):
        c = data["calibration"]
        lines.append(f"- Static int8 calibration: {c['examples']} examples of the {c['split']} split (seed {c['seed']}), "
                     f"{c['method']} ranges.")
    lines += ["", "## Accuracy and parity", "",
              f"On the test split; agreement is top-1 agreement with the fp32 PyTorch student; ECE with "
              f"{record['ece_bins']} equal-width confidence bins.", "",
              "| artefact | file | size | accuracy | NLL | ECE | agreement | max abs logit diff |",
              "|---|---|---|---|---|---|---|---|"]
    for r in record["artefacts"]:
        lines.append(f"| {r['name']} | {r['file'] or '(in memory)'} | {r['size_bytes'] / 1024:.1f} KB | "
                     f"{_pct(r['accuracy'])} | {r['nll']:.4f} | {r['ece']:.4f} | {r['agreement']:.4f} | "
                     f"{r['max_abs_diff']:.2e} |")
    p = record["parity"]
    lines += ["", f"fp32 parity ({', '.join(p['checked']) or 'none'}): "
              + ("passed" if p["passed"] else "FAILED") + f", tolerance {p['atol']:g} on the logits and top-1 "
              "agreement 1.0. The in-memory PyTorch student's size is its tensors' bytes."]
    quant = [r for r in record["artefacts"] if r["quantization"]]
    if quant:
        lines += ["", "Quantization:"] + [f"- {r['name']}: {r['quantization']}" for r in quant]
    if record.get("skipped"):
        lines += ["", "Not written:"] + [f"- {s}" for s in record["skipped"]]
    lat = record["latency"]
    lines += ["", "## Latency", ""]
    if lat:
        lines += [f"Milliseconds per call, p50 / p95 of {lat['reps']} calls after {lat['warmup']} warm-up calls, "
                  f"{lat['device']}, {lat['threads']} thread, on the machine that exported.", "",
                  "| artefact | runtime | batch 1 | batch 64 |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['runtime']} | {_lat(r, 1)} | {_lat(r, 64)} |" for r in record["artefacts"]]
    else:
        lines.append("Not measured (--no-latency).")
    v = record["versions"]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v[k]}" for k in sorted(v)) + ".", ""]
    return "\n".join(lines)

#!/usr/bin/env python3
"""Example agent: summarises the text files of a job's input folder.

Speaks the agent-sidecar protocol: JSON progress lines on stdout, diagnostics on stderr,
artifacts under $AGENT_OUTPUT_DIR/artifacts, its own summary.json and metrics.json in
$AGENT_OUTPUT_DIR (the sidecar completes them). Standard library only.
"""
import collections
import csv
import json
import os
import re
import sys
import time

STOPWORDS = set("a an and are as at be by for from has have in is it its of on or that the this to was were will with".split())


def progress(stage, message, percent):
    print(json.dumps({"stage": stage, "message": message, "percent": percent}), flush=True)


def log(message):
    print(message, file=sys.stderr, flush=True)


def summarise(text, max_sentences):
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    words = re.findall(r"[A-Za-z']+", text.lower())
    top = collections.Counter(w for w in words if w not in STOPWORDS and len(w) > 2).most_common(5)
    return {
        "words": len(words),
        "sentences": len(sentences),
        "summary": " ".join(sentences[:max_sentences]),
        "top_words": [w for w, _ in top],
    }


def main():
    input_dir = os.environ["AGENT_INPUT_DIR"]
    output_dir = os.environ["AGENT_OUTPUT_DIR"]
    params = json.loads(os.environ.get("AGENT_PARAMS") or "{}")
    max_sentences = int(params.get("max_sentences", 2))
    delay = float(params.get("step_delay_s", 0.15))
    with open(os.environ["AGENT_MANIFEST"]) as f:
        manifest = json.load(f)

    # Manifest v1 lists paths, v2 lists {path, bytes, sha256} objects.
    listed = [i["path"] if isinstance(i, dict) else i for i in manifest.get("inputs") or []]
    names = listed or sorted(n for n in os.listdir(input_dir) if n.endswith(".txt"))
    progress("reading", f"Reading {len(names)} input files", 5)
    log(f"summarizer: job {os.environ['AGENT_JOB_ID']} with {len(names)} files, max_sentences={max_sentences}")

    findings = []
    for i, name in enumerate(names, start=1):
        with open(os.path.join(input_dir, name), encoding="utf-8", errors="replace") as f:
            result = summarise(f.read(), max_sentences)
        findings.append({"file": name, **result})
        progress("summarize", f"Summarised {i}/{len(names)}: {name}", 10 + int(80 * i / len(names)))
        time.sleep(delay)

    artifacts = os.path.join(output_dir, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    with open(os.path.join(artifacts, "summary.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "words", "sentences", "top_words", "summary"])
        for item in findings:
            writer.writerow([item["file"], item["words"], item["sentences"], " ".join(item["top_words"]), item["summary"]])
    with open(os.path.join(artifacts, "findings.json"), "w") as f:
        json.dump(findings, f, indent=2)
    progress("write", "Wrote summary.csv and findings.json", 95)

    total_words = sum(item["words"] for item in findings)
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump({
            "status": "completed",
            "findings": findings,
            "notes": f"{len(findings)} files summarised, {total_words} words read",
        }, f, indent=2)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump({"files_summarised": len(findings), "words_read": total_words}, f)
    progress("done", "Finished", 100)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Rewrites docs/architecture.md's stage graph (the drawing and the text) from the
# registered one (dataplane/src/pipeline/registry.rs); tests/graph_doc.rs checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(cargo test -q -p podpath-dataplane --test graph_doc print_graph -- --ignored --nocapture 2>/dev/null)
python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
mer = out.split("<<MERMAID\n", 1)[1].split("MERMAID\n", 1)[0]
txt = out.split("<<TEXT\n", 1)[1].split("TEXT\n", 1)[0]
p = "docs/architecture.md"
s = open(p).read()
s = re.sub(r"```mermaid\n.*?```", lambda _: "```mermaid\n" + mer + "```", s, count=1, flags=re.S)
s = re.sub(r"```text stage-graph\n.*?```", lambda _: "```text stage-graph\n" + txt + "```", s, count=1, flags=re.S)
open(p, "w").write(s)
PY

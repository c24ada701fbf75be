"""Write prometheusrule.yaml from rules.yml, so the two can never disagree.

rules.yml is the source (promtool reads it); the PrometheusRule the Prometheus Operator
needs is the same `groups:` under `spec:`, indented, comments and all.

    python deploy/prometheus/render_crd.py           # rewrite prometheusrule.yaml
    python deploy/prometheus/render_crd.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "rules.yml"
TARGET = HERE / "prometheusrule.yaml"

HEADER = """\
# Generated from rules.yml by render_crd.py: edit rules.yml, then run
#   python deploy/prometheus/render_crd.py
#
# The Prometheus Operator loads a PrometheusRule only if it matches the Prometheus
# resource's ruleSelector and ruleNamespaceSelector (kube-prometheus-stack: add the label
# `release: <your release name>`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: zai-proxy
  labels:
    app.kubernetes.io/name: zai-proxy
    app.kubernetes.io/component: alerting
spec:
"""


def render(source: str) -> str:
    """The PrometheusRule text for a rules file's text."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = [("  " + line) if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    wanted = render(SOURCE.read_text(encoding="utf-8"))
    if "--check" in argv:
        if TARGET.read_text(encoding="utf-8") != wanted:
            print(f"{TARGET.name} is out of date: run python {Path(__file__).name}")
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

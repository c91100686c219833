#!/bin/sh
# Prints deploy/prometheus/alerts.yml wrapped in a PrometheusRule (Prometheus Operator):
#   deploy/prometheus/prometheusrule.sh > deploy/k8s/prometheusrule.yaml
# tests/tests/suite/deploy_files.rs checks that the two hold the same rules.
set -eu
cd "$(dirname "$0")"
cat <<'HEAD'
# GENERATED from deploy/prometheus/alerts.yml by deploy/prometheus/prometheusrule.sh: edit
# alerts.yml and regenerate. The alert rules for the Prometheus Operator, beside the
# ServiceMonitor; runbooks: docs/operations.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: mailpipe
  labels:
    app.kubernetes.io/part-of: mailpipe
spec:
HEAD
grep -v '^#' alerts.yml | sed 's/^\(.\)/  \1/'

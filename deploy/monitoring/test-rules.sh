#!/usr/bin/env bash
# Checks deploy/monitoring with promtool (Debian package `prometheus`,
# installed by scripts/setup.sh): the alert rules parse, their unit tests in
# alerts.test.yml pass, the scrape configs parse, and the PrometheusRule for
# prometheus-operator matches alerts.yml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v promtool >/dev/null 2>&1 \
    || { echo "promtool not found: run scripts/setup.sh (Debian package prometheus)" >&2; exit 1; }

promtool check rules alerts.yml
promtool test rules alerts.test.yml
promtool check config prometheus-local.yml
# Debian builds Prometheus without Kubernetes service discovery, so its
# promtool cannot read prometheus.yml's kubernetes_sd_configs; a promtool
# that can (upstream releases) checks it too.
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
if promtool check config prometheus.yml >"$out" 2>&1; then
    cat "$out"
elif grep -q 'field kubernetes_sd_configs not found' "$out"; then
    echo "prometheus.yml: not checked, this promtool lacks Kubernetes discovery ($(promtool --version 2>&1 | head -1))"
else
    cat "$out" >&2
    exit 1
fi

if ! diff -u prometheus-operator/prometheusrule.yaml <(bash gen-prometheusrule.sh); then
    echo "prometheus-operator/prometheusrule.yaml is stale: bash deploy/monitoring/gen-prometheusrule.sh > deploy/monitoring/prometheus-operator/prometheusrule.yaml" >&2
    exit 1
fi
# The PrometheusRule's rules are the same rules promtool just checked.
promtool check rules <(sed -n '/^spec:/,$p' prometheus-operator/prometheusrule.yaml | tail -n +2 | sed 's/^  //')
echo "deploy/monitoring: rules, rule tests, scrape configs and PrometheusRule ok"

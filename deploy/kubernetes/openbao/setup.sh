#!/usr/bin/env bash
# Sets up OpenBao (or Vault: replace `bao` with `vault`) so that sidekey sidecars of the
# `research-agent` service account in namespace `agents` can read the agent's GitHub token.
# Run with BAO_ADDR and BAO_TOKEN (an admin token) set, from a machine that reaches OpenBao.
#
# OpenBao validates the pod's token with the TokenReview API, so its own service account needs
# the `system:auth-delegator` ClusterRole (the OpenBao Helm chart binds it when
# `server.authDelegator.enabled=true`).
set -euo pipefail

# 1. The Kubernetes auth method. Inside the cluster, OpenBao finds the API server and its CA by
#    itself; from outside, add kubernetes_ca_cert=@ca.crt and a token_reviewer_jwt.
bao auth enable kubernetes 2>/dev/null || true
bao write auth/kubernetes/config kubernetes_host="https://kubernetes.default.svc:443"

# 2. What the agent may read.
bao secrets enable -path=secret kv-v2 2>/dev/null || true
bao kv put secret/agents/github token="ghp_example-replace-me"
bao policy write research-agent - <<'HCL'
path "secret/data/agents/github" {
  capabilities = ["read"]
}
HCL

# 3. The role sidekey logs in as: bound to the agent's service account and namespace, and to the
#    audience of the projected token the injector mounts (sidekey.dev/token-audience: openbao).
#    Short-lived OpenBao tokens: sidekey logs in again as needed.
bao write auth/kubernetes/role/research-agent \
    bound_service_account_names=research-agent \
    bound_service_account_namespaces=agents \
    audience=openbao \
    token_policies=research-agent \
    token_ttl=15m \
    token_max_ttl=1h

echo "ok: pods of agents/research-agent annotated sidekey.dev/token-audience: openbao can log in" >&2

#!/usr/bin/env bash
# Sets up OpenBao (or Vault: replace `bao` with `vault`) so that sidekey sidecars of the
# `research-agent` service account in namespace `agents` can read the agent's GitHub token.
# Run with BAO_ADDR and BAO_TOKEN (an admin token) set, from a machine that reaches OpenBao.
#
# OpenBao validates the pod's token with the TokenReview API, so its own service account needs
# the `system:auth-delegator` ClusterRole (the OpenBao Helm chart binds it when
# `server.authDelegator.enabled=true`).
set -euo pipefail

# 1. The Kubernetes auth method. An OpenBao running in the cluster uses its own pod's CA file
#    and token to call TokenReview; one running elsewhere needs KUBERNETES_HOST (the API server's
#    URL), KUBERNETES_CA_CERT (a file with its CA) and a token_reviewer_jwt added below.
bao auth enable kubernetes 2>/dev/null || true
config=(kubernetes_host="${KUBERNETES_HOST:-https://kubernetes.default.svc:443}")
if [[ -n "${KUBERNETES_CA_CERT:-}" ]]; then
    config+=(kubernetes_ca_cert="@$KUBERNETES_CA_CERT")
fi
bao write auth/kubernetes/config "${config[@]}"

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

#!/bin/sh
# Seeds OpenBao for the compose stack (the `openbao-init` service runs it; tests/compose.rs runs
# it against a native dev server): a demo API key in KV v2, a policy that reads only it, and an
# AppRole `sidekey` with that policy, whose role ID and secret ID go to $APPROLE_DIR for sidekey.
# sidekey never gets the root token.
#
# Env: BAO_ADDR, BAO_TOKEN (the dev root token), BAO_CACERT (the dev server's CA), APPROLE_DIR;
# SIDEKEY_UID (optional, uid:gid): owner of the two files (sidekey's user in its image).
# POSIX sh (the openbao image has no bash). Safe to run again.
set -eu
: "${BAO_ADDR:?}" "${BAO_TOKEN:?}" "${APPROLE_DIR:?}"

# The demo API key: random at every seeding, never printed; read it with the root token:
#   bao kv get -mount=secret demo/api
key="demo-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# The dev server may still be starting, and its KV v2 mount at secret/ upgrades itself first:
# try the write for up to 60 s.
tries=0
until printf '%s' "$key" | bao kv put -mount=secret demo/api key=- >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        echo "seed.sh: cannot write to OpenBao at $BAO_ADDR after 60 s:" >&2
        printf '%s' "$key" | bao kv put -mount=secret demo/api key=- >/dev/null
        exit 1
    fi
    sleep 1
done
echo "seed.sh: wrote secret/demo/api (field key)"

bao policy write sidekey - >/dev/null <<'HCL'
path "secret/data/demo/api" { capabilities = ["read"] }
path "sys/leases/revoke"    { capabilities = ["update"] }
HCL
echo "seed.sh: wrote policy sidekey"

if ! bao auth list -format=json | grep -q '"approle/"'; then
    bao auth enable approle >/dev/null
fi
bao write auth/approle/role/sidekey token_policies=sidekey token_ttl=15m token_max_ttl=1h >/dev/null

umask 077
mkdir -p "$APPROLE_DIR"
bao read -field=role_id auth/approle/role/sidekey/role-id >"$APPROLE_DIR/role-id"
bao write -f -field=secret_id auth/approle/role/sidekey/secret-id >"$APPROLE_DIR/secret-id"
if [ -n "${SIDEKEY_UID:-}" ]; then
    chown "$SIDEKEY_UID" "$APPROLE_DIR/role-id" "$APPROLE_DIR/secret-id"
fi
echo "seed.sh: AppRole sidekey (policy sidekey): role-id and secret-id in $APPROLE_DIR"

//! deploy/kubernetes/openbao/setup.sh, the documented OpenBao set-up for sidekey's Kubernetes
//! auth, run for real against an OpenBao dev server: every `bao` command in it must be accepted,
//! and the role it leaves must bind the service account, namespace and token audience that the
//! example config and the injector's annotation use. (Logging in needs a kube-apiserver for
//! TokenReview, which this machine cannot run; the vault issuer's login is covered with the jwt
//! method in tests/vault_peer.rs, which sends the same request shape.)

use std::process::Command;

use crate::common::openbao::{bao_bin, OpenBao, ROOT_TOKEN};
use crate::common::sidekey::repo_root;

#[test]
fn setup_script_configures_the_kubernetes_role() {
    let bao = OpenBao::start();
    let bin_dir = bao_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = tempfile::tempdir().unwrap();
    // This OpenBao is not in a cluster: it is given the API server's address and CA, as the
    // script says for an OpenBao outside the cluster.
    let api_ca = crate::common::TestCa::new("test kube-apiserver CA");
    let script = repo_root().join("deploy/kubernetes/openbao/setup.sh");
    for run in 0..2 {
        // Twice: the script can be run again.
        let out = Command::new("bash")
            .arg(&script)
            .env("PATH", &path)
            .env("HOME", home.path())
            .env("BAO_ADDR", bao.address())
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("KUBERNETES_HOST", "https://kube-apiserver.test:6443")
            .env("KUBERNETES_CA_CERT", api_ca.pem_path())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .expect("run setup.sh");
        assert!(
            out.status.success(),
            "setup.sh (run {run}) failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let config = bao.api_ok("GET", "auth/kubernetes/config", None);
    assert_eq!(
        config["data"]["kubernetes_host"],
        "https://kube-apiserver.test:6443"
    );
    assert_eq!(
        config["data"]["kubernetes_ca_cert"]
            .as_str()
            .unwrap()
            .trim(),
        api_ca.cert_pem().trim()
    );

    let role = bao.api_ok("GET", "auth/kubernetes/role/research-agent", None);
    let data = &role["data"];
    assert_eq!(
        data["bound_service_account_names"],
        serde_json::json!(["research-agent"])
    );
    assert_eq!(
        data["bound_service_account_namespaces"],
        serde_json::json!(["agents"])
    );
    assert_eq!(data["audience"], "openbao");
    assert_eq!(
        data["token_policies"],
        serde_json::json!(["research-agent"])
    );

    // The example config reads the secret the script wrote, at the path the policy allows.
    let example =
        std::fs::read_to_string(repo_root().join("deploy/kubernetes/openbao/sidekey-config.yaml"))
            .unwrap();
    assert!(example.contains("role: research-agent"));
    assert!(example.contains("path: secret/data/agents/github"));
    assert!(example.contains("sidekey.dev/token-audience: openbao"));
    let secret = bao.api_ok("GET", "secret/data/agents/github", None);
    assert!(secret["data"]["data"]["token"].is_string());
    let policy = bao.api_ok("GET", "sys/policy/research-agent", None);
    assert!(
        policy["data"]["rules"]
            .as_str()
            .unwrap()
            .contains("secret/data/agents/github"),
        "{policy}"
    );
}

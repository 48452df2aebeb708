// An agent using Go's net/http through sidekey: no credential anywhere in the code.
//
//	HTTPS_PROXY=http://127.0.0.1:15080 HTTP_PROXY=http://127.0.0.1:15080 \
//	SSL_CERT_FILE=/var/run/sidekey/bundle.pem go run main.go URL
//
// http.DefaultTransport uses http.ProxyFromEnvironment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY),
// and on Linux crypto/x509 loads its roots from SSL_CERT_FILE when it is set: the bundle
// (sidekey's CA and the system roots) keeps hosts outside sidekey verifiable too.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	url := "https://api.anthropic.com/v1/messages"
	if len(os.Args) > 1 {
		url = os.Args[1]
	}
	body := []byte(`{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`)
	req, err := http.NewRequest("POST", url, bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("anthropic-version", "2023-06-01") // not a secret; sidekey adds x-api-key
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	fmt.Println(res.StatusCode, res.Header.Get("content-type"))
	fmt.Println(string(out))
}

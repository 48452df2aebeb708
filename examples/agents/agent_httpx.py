"""An agent using Python `httpx` through sidekey, streaming server-sent events: no credential
anywhere in the code.

    HTTPS_PROXY=http://127.0.0.1:15080 SSL_CERT_FILE=/var/run/sidekey/bundle.pem \
    python3 agent_httpx.py URL

httpx reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY and SSL_CERT_FILE from the environment by
default (trust_env=True). The body is an OpenAI-style streaming request; each event is
printed as it arrives.
"""

import json
import sys

import httpx

url = sys.argv[1] if len(sys.argv) > 1 else "https://api.openai.com/v1/chat/completions"
body = {"model": "gpt-4.1-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
with httpx.Client(timeout=60) as client:
    with client.stream("POST", url, json=body) as r:
        print(r.status_code, r.headers.get("content-type"), flush=True)
        for line in r.iter_lines():
            if line:
                print(line, flush=True)

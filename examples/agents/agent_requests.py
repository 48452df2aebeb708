"""An agent using Python `requests` through sidekey: no credential anywhere in the code.

    HTTPS_PROXY=http://127.0.0.1:15080 HTTP_PROXY=http://127.0.0.1:15080 \
    REQUESTS_CA_BUNDLE=/var/run/sidekey/bundle.pem python3 agent_requests.py URL

requests reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY and REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE)
from the environment by itself.
"""

import sys

import requests

url = sys.argv[1] if len(sys.argv) > 1 else "https://api.github.com/repos/acme/widgets"
r = requests.get(url, headers={"Accept": "application/vnd.github+json"}, timeout=30)
print(r.status_code, r.headers.get("content-type"))
print(r.text)

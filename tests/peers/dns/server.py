"""A DNS server the SSRF tests control (dnslib).

Usage: server.py '{"name.test": [["1.2.3.4"], ["127.0.0.1", "::1"]], ...}'

Each name has a list of answer sets; the n-th A query for a name gets the IPv4 addresses of set
n (cycling), the n-th AAAA query the IPv6 ones, all with TTL 0 so that nothing is cached: a
name can "rebind" from one query to the next. Other names get NXDOMAIN. Serves UDP and TCP on
one loopback port, prints "port N" first, then "query NAME TYPE" for every query.
"""

import ipaddress
import json
import sys
import threading
import time

from dnslib import AAAA, QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class Cycling(BaseResolver):
    def __init__(self, answers):
        self.answers = {k.lower().rstrip("."): v for k, v in answers.items()}
        self.counts = {}
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        print(f"query {name} {qtype}", flush=True)
        sets = self.answers.get(name)
        if sets is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if qtype not in ("A", "AAAA"):
            return reply
        with self.lock:
            n = self.counts.get((name, qtype), 0)
            self.counts[(name, qtype)] = n + 1
        for addr in sets[n % len(sets)]:
            ip = ipaddress.ip_address(addr)
            if qtype == "A" and ip.version == 4:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(str(ip)), ttl=0))
            elif qtype == "AAAA" and ip.version == 6:
                reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(tuple(ip.packed)), ttl=0))
        return reply


def main():
    resolver = Cycling(json.loads(sys.argv[1]))
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data")
    # UDP takes a free port; TCP needs the same number, which another process may hold (the
    # ephemeral range is shared with every connection the other tests make): try another.
    for attempt in range(50):
        udp = DNSServer(resolver, port=0, address="127.0.0.1", logger=quiet)
        port = udp.server.server_address[1]
        try:
            tcp = DNSServer(resolver, port=port, address="127.0.0.1", tcp=True, logger=quiet)
            break
        except OSError:
            udp.server.server_close()
            if attempt == 49:
                raise
    udp.start_thread()
    tcp.start_thread()
    print(f"port {port}", flush=True)
    # Until the test kills us, or its end of stdin closes.
    try:
        while sys.stdin.read(1):
            pass
    except KeyboardInterrupt:
        pass
    udp.stop()
    tcp.stop()


if __name__ == "__main__":
    main()

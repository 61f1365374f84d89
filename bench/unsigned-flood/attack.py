# Driven by bench/unsigned-flood/run: argv is the sidecar pid and the number of attackers.
import socket, sys, time, json, subprocess, os
pid = int(sys.argv[1]); n = int(sys.argv[2])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) // 1024
print("rss before MB", rss())
socks = []
body = b"x" * ((1 << 20) - 2)
for i in range(n):
    s = socket.create_connection(("127.0.0.1", 18080))
    s.sendall(b"POST /wh HTTP/1.1\r\nhost: h\r\ncontent-length: %d\r\n\r\n" % ((1 << 20) - 1))
    s.setblocking(False)
    try: s.send(body)
    except BlockingIOError: pass
    except OSError: pass
    socks.append(s)
time.sleep(1)
print("rss during MB", rss())
# a signed webhook meanwhile
from standardwebhooks import Webhook
wh = Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
import datetime, urllib.request
payload = '{"type":"ok"}'
ts = datetime.datetime.now(tz=datetime.timezone.utc)
sig = wh.sign("msg_rss", ts, payload)
req = urllib.request.Request("http://127.0.0.1:18080/wh", data=payload.encode(), headers={"webhook-id": "msg_rss", "webhook-timestamp": str(int(ts.timestamp())), "webhook-signature": sig, "content-type": "application/json"})
t0 = time.time()
print("signed webhook", urllib.request.urlopen(req, timeout=10).status, "in", round(time.time() - t0, 3), "s")
peak = rss()
deadline = time.time() + 30
open_count = n
while time.time() < deadline and open_count:
    open_count = 0
    for s in socks:
        try:
            d = s.recv(65536)
            if d: open_count += 1  # data then maybe close
        except BlockingIOError:
            open_count += 1
        except OSError:
            pass
    peak = max(peak, rss())
    time.sleep(0.5)
print("peak rss MB", peak, "still open after", round(time.time() - t0, 1), "s:", open_count)

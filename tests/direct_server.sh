#!/bin/sh
# The direct-descriptor example answers real requests: start it, send N
# requests over loopback, expect N "ok" answers and a clean exit.
set -eu
server=$1
n=${2:-200}
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
mkfifo "$tmp/out"
"$server" --max "$n" > "$tmp/out" &
pid=$!
exec 3< "$tmp/out"
read -r word port <&3
[ "$word" = ready ]
python3 - "$port" "$n" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / %d\r\n\r\n" % i)
        data = b""
        while True:
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
        assert data == b"ok", (i, data)
print(f"{n} requests answered")
PY
read -r json <&3
echo "$json"
wait "$pid"
case $json in *"\"served\": $n,"*"\"slots_in_use\": 0}"*) ;; *) exit 1 ;; esac

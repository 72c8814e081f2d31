# Shared by the benchmark scripts that start servers (source it): a scratch directory `$work`
# removed on exit with every pid in `pids` killed, a free loopback port, and waiting for one.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# Debian packages the scripts need, installed when missing: "package:command" pairs.
need_debs() {
  local missing=() pc
  for pc in "$@"; do command -v "${pc#*:}" >/dev/null 2>&1 || [ -x "${pc#*:}" ] || missing+=("${pc%%:*}"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

# nginx (Debian package) serving directory $1 as static files on port $2: 2 workers (the
# machine's cores), sendfile, keep-alive as pixgate, an immutable Cache-Control like pixgate's
# signed URLs; access log to $3 when given, else off.
nginx_serve() { # $1 = root, $2 = port, $3 = access log file (optional)
  local conf="$work/nginx.conf" log="access_log off;"
  [ -z "${3:-}" ] || log="access_log $3;"
  # nginx workers run as an unprivileged user: let them read the files.
  chmod 755 "$work" "$1"; chmod 644 "$1"/*
  cat > "$conf" <<EOF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  $log
  sendfile on; tcp_nopush on;
  keepalive_requests 1000000;
  types { image/webp webp; image/jpeg jpg; image/png png; }
  server {
    listen 127.0.0.1:$2;
    root $1;
    location / { add_header Cache-Control "public, max-age=31536000, immutable"; }
  }
}
EOF
  /usr/sbin/nginx -c "$conf" -g 'daemon off;' -p "$work" > /dev/null 2>&1 &
  pids+=($!)
  wait_port "$2"
}

# Requests per second of one URL under wrk (-t1, $3 connections, $2 seconds); fails on any
# response that is not 2xx or 3xx.
wrk_rps() { # $1 = url, $2 = seconds, $3 = connections
  local out; out=$(wrk -t1 -c"$3" -d"$2s" --latency "$1")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses from $1:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec:/ {print $2}' <<<"$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# A private Garage (S3) on free ports under $work, with one key and the buckets named in "$@"
# (read/write/owner for that key). Sets GARAGE_S3 (endpoint URL), GARAGE_KEY_ID and
# GARAGE_SECRET; `g ARGS` runs the garage CLI against it.
start_garage() {
  local garage=${GARAGE_BIN:-$HOME/.cargo/bin/garage} rpc s3 admin node b
  rpc=$(free_port); s3=$(free_port); admin=$(free_port)
  cat > "$work/garage.toml" <<EOF
metadata_dir = "$work/garage-meta"
data_dir = "$work/garage-data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
EOF
  "$garage" -c "$work/garage.toml" server > /dev/null 2> "$work/garage.log" &
  pids+=($!)
  wait_port "$s3"; wait_port "$rpc"
  g() { for _ in $(seq 50); do "$garage" -c "$work/garage.toml" "$@" 2>/dev/null && return 0; sleep 0.2; done; echo "garage $*" >&2; exit 1; }
  node=$(g node id -q | cut -d@ -f1)
  g layout assign -z dc1 -c 10G "$node" > /dev/null
  g layout apply --version 1 > /dev/null
  GARAGE_KEY_ID=GK0123456789abcdef01234567
  GARAGE_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  g key import --yes -n bench "$GARAGE_KEY_ID" "$GARAGE_SECRET" > /dev/null
  for b in "$@"; do
    g bucket create "$b" > /dev/null
    g bucket allow --read --write --owner "$b" --key bench > /dev/null
  done
  GARAGE_S3="http://127.0.0.1:$s3"
}

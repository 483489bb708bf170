# common.sh - sourced by the gateway benches (gateway.sh, gateway_keys.sh,
# gateway_instr.sh), which must measure against the same upstream and, for
# the last two, the same nginx configured as an API gateway: one copy of
# each, here. Expects $work (the bench's directory), $UP (the upstream's
# port) and, for the API gateway, $NGX (its port).

code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "X-API-Key: $2" "$1" || true; }
expect() { # url key status
  local got
  got=$(code "$1" "$2")
  [ "$got" = "$3" ] || { echo "$1 with key ${2:0:16}...: got $got, expected $3" >&2; exit 1; }
}

# The upstream: nginx answering every path with a ~50-byte JSON body.
write_upstream_conf() {
  cat > "$work/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/up.pid;
error_log $work/up.err;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$UP reuseport backlog=4096;
    keepalive_requests 1000000;
    location / { default_type application/json; return 200 '{"ok":true,"service":"bench-upstream","n":42}'; }
  }
}
EOF
}

# nginx as an API gateway, as NGINX's "Deploying NGINX as an API Gateway"
# does it: the keys of $work/k10/nginx_map.conf in a map, limit_req keyed
# per client, an access log with buffer=64k, a keep-alive upstream pool.
#   write_nginx_gw_conf PROCESS_LINES AUTH VALIDATE
# PROCESS_LINES: the top-level lines on processes ("worker_processes 2;");
# AUTH: the location's key check; VALIDATE: an extra location, or "".
write_nginx_gw_conf() {
  cat > "$work/gw_nginx.conf" <<EOF
$1
daemon off;
pid $work/ngx.pid;
error_log $work/ngx.err;
events { worker_connections 8192; }
http {
  log_format api_main '\$remote_addr - \$remote_user [\$time_local] "\$request" '
                      '\$status \$body_bytes_sent "\$http_referer" "\$http_user_agent" '
                      '"\$http_x_forwarded_for" "\$api_name" "\$api_client_name"';
  # 10,000 keys of 57 chars: the map's hash needs room (nginx says so at start)
  map_hash_bucket_size 256;
  map_hash_max_size 65536;
  map \$http_x_api_key \$api_client_name {
    default "";
    include $work/k10/nginx_map.conf;
  }
  limit_req_zone \$api_client_name zone=clients:10m rate=100000r/s;
  limit_req_status 429;
  upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX reuseport backlog=4096;
    keepalive_requests 1000000;
    access_log $work/ngx_access.log api_main buffer=64k;
    set \$api_name "bench";
    location /bench/ {
      $2
      limit_req zone=clients burst=1000 nodelay;
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-API-Key "";
      proxy_set_header X-Client-Name \$api_client_name;
    }
    $3
  }
}
EOF
}

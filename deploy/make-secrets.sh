#!/usr/bin/env bash
# Makes what a coordinator off loopback needs: random bearer tokens and a
# private CA with a server certificate, for deploy/compose.yaml and
# deploy/k8s. Needs openssl.
#
#   deploy/make-secrets.sh DIR [NAME...]
#
# DIR gets:
#   tokens.toml   the coordinator's tokens file: the worker token and the
#                 users `admin` (admin = true) and $USER
#   worker-token  the worker token, for the workers (ADJOINT_WORKER_TOKEN_FILE)
#   admin.token, <user>.token   users' tokens, for the CLI (ADJOINT_TOKEN_FILE)
#   ca.crt        the CA the workers and the CLI trust (ADJOINT_CA_FILE)
#   server.crt, server.key   the coordinator's certificate and key, valid
#                 for every NAME (default: localhost, 127.0.0.1, coordinator,
#                 adjoint-coordinator and its cluster names)
#
# Existing files are kept: delete DIR to start again. DIR itself is private
# (0700); the files in it are readable (0644, ca.key 0600) because compose
# mounts them as they are into containers that run as another user.
set -euo pipefail
dir=${1:?usage: deploy/make-secrets.sh DIR [NAME...]}
shift
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(localhost 127.0.0.1 coordinator adjoint-coordinator
         adjoint-coordinator.adjoint.svc adjoint-coordinator.adjoint.svc.cluster.local)
fi
command -v openssl >/dev/null || { echo "make-secrets: openssl is needed" >&2; exit 1; }
umask 077
mkdir -p "$dir"
cd "$dir"

token() { openssl rand -hex 24; }
user=$(id -un 2>/dev/null || echo user)
user=${user//[^A-Za-z0-9._@-]/_}

if [ ! -f tokens.toml ]; then
  token >worker-token
  token >admin.token
  [ "$user" = admin ] || token >"$user.token"
  {
    echo "# adjoint tokens file (deploy/make-secrets.sh). Keep it private."
    echo "worker_token = \"$(cat worker-token)\""
    echo
    echo "[[users]]"
    echo "name = \"admin\""
    echo "token = \"$(cat admin.token)\""
    echo "admin = true"
    if [ "$user" != admin ]; then
      echo
      echo "[[users]]"
      echo "name = \"$user\""
      echo "token = \"$(cat "$user.token")\""
    fi
  } >tokens.toml
  echo "made tokens.toml, worker-token, admin.token${user:+, $user.token}"
fi

if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=adjoint CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
  echo "made ca.crt (ca.key signs; keep it offline)"
fi

if [ ! -f server.crt ]; then
  san=""
  for n in "${names[@]}"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
  done
  openssl req -newkey rsa:3072 -nodes -subj "/CN=${names[0]}" \
    -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "${san%,}" >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days 825 -extfile server.ext -out server.crt 2>/dev/null
  rm -f server.csr server.ext ca.srl
  echo "made server.crt, server.key for ${names[*]}"
fi
chmod 700 .
chmod 644 ./*.token worker-token tokens.toml ca.crt server.crt server.key
chmod 600 ca.key
echo "in $dir: CLI: ADJOINT_TOKEN_FILE=$dir/$user.token ADJOINT_CA_FILE=$dir/ca.crt adjoint jobs --addr https://HOST:50051"

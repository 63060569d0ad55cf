#!/usr/bin/env bash
# A throw-away test CA and an EC P-256 server certificate for localhost and 127.0.0.1, valid
# for 2 days, for the benchmarks' TLS runs:
#   bench/test-ca.sh DIR [CA-NAME]   -> DIR/ca.pem, DIR/cert.pem, DIR/key.pem (readable by all)
set -euo pipefail
dir=$1 name=${2:-mediarelay-bench-CA}
mkdir -p "$dir"
cd "$dir"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -subj "/CN=$name" -days 2 -out ca.pem
openssl ecparam -name prime256v1 -genkey -noout -out key.pem
openssl req -new -key key.pem -subj /CN=localhost -out srv.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem
chmod a+r key.pem cert.pem ca.pem

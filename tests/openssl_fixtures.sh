#!/bin/sh
# Makes keys and certificates with the openssl CLI, for interoperability
# tests in both directions.  Usage: openssl_fixtures.sh DIR
set -eu
d=$1
cd "$d"
q() { "$@" >/dev/null 2>&1 || { echo "openssl_fixtures: failed: $*" >&2; exit 1; }; }

# An Ed25519 CA and leaf made entirely by openssl.
q openssl genpkey -algorithm ed25519 -out ossl_ca.key
q openssl req -x509 -new -key ossl_ca.key -subj /CN=openssl-ca -days 30 \
  -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign -out ossl_ca.crt
q openssl genpkey -algorithm ed25519 -out ossl_leaf.key
q openssl req -new -key ossl_leaf.key -subj /CN=localhost -out ossl_leaf.csr
q openssl x509 -req -in ossl_leaf.csr -CA ossl_ca.crt -CAkey ossl_ca.key \
  -CAcreateserial -days 30 -out ossl_leaf.crt

# An expired leaf from the same CA (openssl ca takes explicit dates).
mkdir -p cadb
: >cadb/index.txt
echo 1000 >cadb/serial
cat >cadb/ca.cnf <<CNF
[ca]
default_ca = d
[d]
database = cadb/index.txt
new_certs_dir = cadb
serial = cadb/serial
default_md = default
policy = p
[p]
commonName = supplied
CNF
q openssl ca -batch -config cadb/ca.cnf -cert ossl_ca.crt -keyfile ossl_ca.key \
  -in ossl_leaf.csr -out ossl_expired.crt -notext \
  -startdate 20200101000000Z -enddate 20210101000000Z

# Keys and certificates of other algorithms, which ckt must refuse.
q openssl genpkey -algorithm rsa -pkeyopt rsa_keygen_bits:2048 -out rsa.key
q openssl req -x509 -new -key rsa.key -subj /CN=localhost -days 30 -out rsa.crt
q openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out ec.key
q openssl ec -in ec.key -out ec_trad.key
q openssl genpkey -algorithm ed448 -out ed448.key
q openssl genpkey -algorithm x25519 -out x25519.key
# An Ed25519 key encrypted the OpenSSL way (PBES2): not ckt's format.
q openssl pkey -in ossl_leaf.key -aes-256-cbc -passout pass:secret -out ossl_enc.key
# The raw public key of ossl_leaf.key, as 64 hex digits.
openssl pkey -in ossl_leaf.key -pubout -outform DER 2>/dev/null |
  tail -c 32 | od -An -tx1 | tr -d ' \n' >ossl_leaf.pub

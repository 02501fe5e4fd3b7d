#!/usr/bin/env bash
# Milvus standalone on one Amazon Linux 2023 (arm64) instance: the EC2 user data of the `standalone` store.
#
# cloud-init runs it at the first boot; after a reboot or an EC2 recovery (same instance, volumes and private IP)
# fstab mounts the data volume and Docker restarts Milvus (--restart always). It is idempotent all the same: the data
# volume is formatted only when it has no file system, the TLS CA is created only when the volume has none, and the
# CA certificate is published to its secret on every run, so that the secret always matches the disk.
#
#   milvus_host.sh start            mount the volume, write the configuration, run Milvus (what the user data calls)
#   milvus_host.sh render-config    print the Milvus configuration (user.yaml) for the environment given (tests)
#
# Environment (set by the user data header the stack writes): MILVUS_IMAGE, MILVUS_BUCKET, AWS_REGION,
# ROOT_SECRET_ID, CA_SECRET_ID, SERVER_NAME, DATA_DEVICE; render-config also reads ROOT_PASSWORD.
set -euo pipefail

readonly MILVUS_HOME=${MILVUS_HOME:-/var/lib/milvus}
readonly CONFIG_DIR="${MILVUS_HOME}/configs"
readonly TLS_DIR="${MILVUS_HOME}/tls"
readonly MILVUS_PORT=19530

log() { printf '%s milvus-host: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      log "missing environment variable ${name}"
      exit 2
    fi
  done
}

# The configuration Milvus merges over its defaults (/milvus/configs/user.yaml): authentication with the generated
# root password, one-way TLS on the proxy, and S3 through the instance role (no static keys).
render_config() {
  require MILVUS_BUCKET AWS_REGION ROOT_PASSWORD
  cat <<EOF
common:
  storageType: remote
  security:
    authorizationEnabled: true
    defaultRootPassword: "${ROOT_PASSWORD}"
    tlsMode: 1
tls:
  serverPemPath: /milvus/tls/server.pem
  serverKeyPath: /milvus/tls/server.key
  caPemPath: /milvus/tls/ca.pem
minio:
  address: s3.${AWS_REGION}.amazonaws.com
  port: 443
  useSSL: true
  bucketName: ${MILVUS_BUCKET}
  rootPath: milvus
  useIAM: true
  cloudProvider: aws
  region: ${AWS_REGION}
  useVirtualHost: true
EOF
}

render_etcd_config() {
  cat <<EOF
listen-client-urls: http://127.0.0.1:2379
advertise-client-urls: http://127.0.0.1:2379
quota-backend-bytes: 4294967296
auto-compaction-mode: revision
auto-compaction-retention: '1000'
EOF
}

mount_data_volume() {
  require DATA_DEVICE
  local waited=0
  # Nitro instances expose EBS volumes as NVMe; amazon-ec2-utils links the requested name (/dev/sdf) to it.
  until [[ -e "${DATA_DEVICE}" ]]; do
    if ((waited >= 120)); then
      log "data volume ${DATA_DEVICE} did not appear"
      exit 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
  if ! blkid "${DATA_DEVICE}" >/dev/null 2>&1; then
    log "formatting the new data volume ${DATA_DEVICE}"
    mkfs.xfs -L milvus-data "${DATA_DEVICE}"
  fi
  mkdir -p "${MILVUS_HOME}"
  if ! mountpoint -q "${MILVUS_HOME}"; then
    mount LABEL=milvus-data "${MILVUS_HOME}"
  fi
  if ! grep -q 'LABEL=milvus-data' /etc/fstab; then
    echo "LABEL=milvus-data ${MILVUS_HOME} xfs defaults,nofail 0 2" >>/etc/fstab
  fi
}

imds() {
  local token
  token=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
  curl -sf -H "X-aws-ec2-metadata-token: ${token}" "http://169.254.169.254/latest/meta-data/$1"
}

# A private CA kept on the data volume, and a server certificate for SERVER_NAME and the instance's private IP.
ensure_certificates() {
  require SERVER_NAME CA_SECRET_ID AWS_REGION
  mkdir -p "${TLS_DIR}"
  chmod 700 "${TLS_DIR}"
  if [[ ! -s "${TLS_DIR}/ca.pem" ]]; then
    log "creating the TLS certificate authority"
    openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${TLS_DIR}/ca.key"
    openssl req -x509 -new -key "${TLS_DIR}/ca.key" -sha256 -days 3650 -subj "/CN=ShardRAG Milvus CA" \
      -out "${TLS_DIR}/ca.pem"
  fi
  local ip
  ip=$(imds local-ipv4)
  openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${TLS_DIR}/server.key"
  openssl req -new -key "${TLS_DIR}/server.key" -subj "/CN=${SERVER_NAME}" -out "${TLS_DIR}/server.csr"
  printf 'subjectAltName=DNS:%s,IP:%s\nextendedKeyUsage=serverAuth\n' "${SERVER_NAME}" "${ip}" >"${TLS_DIR}/server.ext"
  openssl x509 -req -in "${TLS_DIR}/server.csr" -CA "${TLS_DIR}/ca.pem" -CAkey "${TLS_DIR}/ca.key" \
    -CAcreateserial -days 825 -sha256 -extfile "${TLS_DIR}/server.ext" -out "${TLS_DIR}/server.pem"
  chmod 600 "${TLS_DIR}"/*.key
  aws secretsmanager put-secret-value --region "${AWS_REGION}" --secret-id "${CA_SECRET_ID}" \
    --secret-string "file://${TLS_DIR}/ca.pem" >/dev/null
}

root_password() {
  require ROOT_SECRET_ID AWS_REGION
  aws secretsmanager get-secret-value --region "${AWS_REGION}" --secret-id "${ROOT_SECRET_ID}" \
    --query SecretString --output text | python3 -c 'import json, sys; print(json.load(sys.stdin)["password"])'
}

install_docker() {
  if ! command -v docker >/dev/null 2>&1; then
    dnf install -y -q docker
  fi
  systemctl enable --now docker
}

run_milvus() {
  require MILVUS_IMAGE
  mkdir -p "${CONFIG_DIR}" "${MILVUS_HOME}/volume"
  ROOT_PASSWORD=$(root_password)
  export ROOT_PASSWORD
  (umask 077 && render_config >"${CONFIG_DIR}/user.yaml")
  render_etcd_config >"${CONFIG_DIR}/embedEtcd.yaml"
  docker pull -q "${MILVUS_IMAGE}" >/dev/null
  docker rm -f milvus >/dev/null 2>&1 || true
  # --restart always: Docker restarts Milvus after a crash and at boot; the instance itself is recovered by the
  # stack's CloudWatch alarms. Port 9091 (health, metrics) stays on the host.
  docker run -d --name milvus --restart always \
    --security-opt seccomp:unconfined \
    -e ETCD_USE_EMBED=true -e ETCD_DATA_DIR=/var/lib/milvus/etcd \
    -e ETCD_CONFIG_PATH=/milvus/configs/embedEtcd.yaml -e DEPLOY_MODE=STANDALONE \
    -v "${MILVUS_HOME}/volume:/var/lib/milvus" \
    -v "${CONFIG_DIR}/embedEtcd.yaml:/milvus/configs/embedEtcd.yaml:ro" \
    -v "${CONFIG_DIR}/user.yaml:/milvus/configs/user.yaml:ro" \
    -v "${TLS_DIR}:/milvus/tls:ro" \
    -p "${MILVUS_PORT}:${MILVUS_PORT}" -p 127.0.0.1:9091:9091 \
    --health-cmd 'curl -sf http://localhost:9091/healthz' --health-interval 30s --health-start-period 90s \
    "${MILVUS_IMAGE}" milvus run standalone >/dev/null
  log "Milvus ${MILVUS_IMAGE} started"
}

main() {
  case "${1:-start}" in
    render-config) render_config ;;
    start)
      require MILVUS_IMAGE MILVUS_BUCKET AWS_REGION ROOT_SECRET_ID CA_SECRET_ID SERVER_NAME DATA_DEVICE
      mount_data_volume
      install_docker
      ensure_certificates
      run_milvus
      ;;
    *)
      log "usage: $0 [start|render-config]"
      exit 2
      ;;
  esac
}

main "$@"

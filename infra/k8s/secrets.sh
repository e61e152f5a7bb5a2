#!/bin/sh
# The Secrets and the ConfigMap dim's manifests and the NATS chart's values name, made from the
# security directory `dim nats-config --out DIR` wrote, printed as YAML (nothing is sent
# anywhere; kubectl renders them offline):
#
#   infra/k8s/secrets.sh ./nats-dim | kubectl apply --namespace dim -f -
#
# Run it again after `dim nodes approve` / `dim nodes revoke --nats-dir ./nats-dim` rewrote
# auth.conf: the NATS servers reload the new one by themselves. The CA's key (tls/ca-key.pem)
# never leaves DIR. The join bundle (ConfigMap dim-join) is made by `dim nodes bundle` for the URL
# the workers dial, nats://nats:4222 (DIM_NATS_URL in base/dim.env); DIM_NAMESPACE, if set,
# names the mesh's namespace in it.
set -eu
if [ $# -ne 1 ] || [ ! -f "$1/auth.conf" ]; then
  echo "usage: $0 NATS_DIR   (the directory \`dim nats-config --out\` wrote)" >&2
  exit 2
fi
dir=$1
DIM=${DIM:-dim}
render() { kubectl create --dry-run=client -o yaml "$@"; echo ---; }

render secret generic dim-nats-ca --from-file=ca.pem="$dir/tls/ca.pem"
render secret generic dim-nats-server-tls \
  --from-file=server.pem="$dir/tls/server.pem" --from-file=server-key.pem="$dir/tls/server-key.pem"
render secret generic dim-nats-auth --from-file=auth.conf="$dir/auth.conf"
for role in gateway orchestrator projector batcher; do
  render secret generic "dim-nats-$role" --from-file="$role.nk=$dir/ids/$role.nk"
done

bundle=$(mktemp)
trap 'rm -f "$bundle"' EXIT
"$DIM" nodes bundle --nats-dir "$dir" --url nats://nats:4222 >"$bundle"
render configmap dim-join --from-file=join.txt="$bundle"
